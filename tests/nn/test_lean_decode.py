"""The lean decode loop against the Hugging Face model it wraps."""

import pytest
import torch

from sparsa.compress import RTNConfig, compress_
from sparsa.errors import SparsaError
from sparsa.nn.lean_decode import LeanLlama, greedy_decode
from sparsa.nn.sparse_linear import decoded_weights


def prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
def test_lean_llama_prefill_then_steps_match_hf_logits(tiny_llama, batch):
    ids = prompt(batch, 9)
    expected = tiny_llama(ids).logits
    lean = LeanLlama(tiny_llama, batch, 12)
    got = [lean.forward(ids[:, :5], 0)] + [lean.forward(ids[:, t:t + 1], t) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(got, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_decode_step_matches_the_torch_path(tiny_llama, batch):
    ids = prompt(batch, 7, seed=3)
    fused, torch_path = LeanLlama(tiny_llama, batch, 12), LeanLlama(tiny_llama, batch, 12, fused=False)
    assert fused.fused and not torch_path.fused
    for lean in (fused, torch_path):
        lean.forward(ids[:, :4], 0)
    for t in range(4, 7):
        torch.testing.assert_close(fused.forward(ids[:, t:t + 1], t), torch_path.forward(ids[:, t:t + 1], t),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.k_cache, torch_path.k_cache, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.v_cache, torch_path.v_cache)


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_layer_step_matches_the_module_path(tiny_llama, batch):
    from sparsa.compress import SpQRConfig
    from sparsa.kernels.cpu.vnni import HAS_VNNI

    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_(tiny_llama, SpQRConfig(bits=3, stat_group_size=16, nsamples=4, seqlen=32), calibration=windows,
              progress=False)
    ids = prompt(batch, 8, seed=5)
    compiled, modules = LeanLlama(tiny_llama, batch, 12), LeanLlama(tiny_llama, batch, 12, fused=False)
    assert compiled.compiled_layers == HAS_VNNI and not modules.compiled_layers
    for lean in (compiled, modules):
        lean.forward(ids[:, :5], 0)
    for t in range(5, 8):
        torch.testing.assert_close(compiled.forward(ids[:, t:t + 1], t), modules.forward(ids[:, t:t + 1], t),
                                   rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.k_cache, modules.k_cache, rtol=1e-4, atol=1e-4)
    with decoded_weights(tiny_llama):  # reference mode: the modules decode their weights, no compiled step
        assert not LeanLlama(tiny_llama, batch, 12).compiled_layers


def test_lean_llama_bf16_takes_the_torch_path(tiny_llama):
    lean = LeanLlama(tiny_llama.to(torch.bfloat16), 1, 8)
    assert not lean.fused
    assert lean.forward(prompt(1, 3), 0).dtype == torch.bfloat16


def test_greedy_decode_matches_hf_generate(tiny_llama):
    ids = prompt(2, 6, seed=1)
    out = greedy_decode(tiny_llama, ids, 10)
    hf = tiny_llama.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(out.tokens, hf[:, 6:])
    assert out.top2_gap.shape == (2, 10) and bool((out.top2_gap >= 0).all())
    assert out.tokens_per_s > 0 and out.prefill_seconds > 0


def test_greedy_decode_compressed_model_runs_its_sparse_linears(tiny_llama):
    compress_(tiny_llama, RTNConfig(bits=4, group_size=16))
    ids = prompt(1, 4)
    out = greedy_decode(tiny_llama, ids, 5)
    with torch.no_grad(), decoded_weights(tiny_llama):
        expected = tiny_llama(torch.cat([ids, out.tokens[:, :-1]], 1)).logits[:, 3:].argmax(-1)
    assert torch.equal(out.tokens, expected)


def test_lean_llama_beyond_its_cache_raises(tiny_llama):
    lean = LeanLlama(tiny_llama, 1, 4)
    with pytest.raises(SparsaError, match="built for batch 1 and 4 positions, asked for batch 1 up to position 5"):
        lean.forward(prompt(1, 5), 0)


def test_greedy_decode_zero_tokens_raises(tiny_llama):
    with pytest.raises(SparsaError, match="new_tokens=0 must be at least 1"):
        greedy_decode(tiny_llama, prompt(1, 3), 0)
