"""The lean decode loop against the Hugging Face model it wraps."""

import copy

import numba
import pytest
import torch

from conftest import tiny_decoder
from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.errors import SparsaError
from sparsa.kernels import recorded_kernels
from sparsa.kernels.cpu import q8
from sparsa.kernels.cpu.dense import DENSE
from sparsa.kernels.cpu.quant import Q8_TOKENS
from sparsa.kernels.cpu.spqr import fp32_path, takes_q8, takes_vnni, wide_activations
from sparsa.kernels.cpu.vnni import HAS_VNNI
from sparsa.nn import sparse_linears
from sparsa.nn.lean_decode import LeanLlama, greedy_decode
from sparsa.nn.sparse_linear import decoded_weights


Q8_LOGIT_ERROR = 1.5e-2  # int8 activations' error on the tiny Llama's logits: 4.3e-3 and 4.9e-3 measured, 3x


def prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def spqr_llama():
    """A tiny Llama with every projection SpQR 3-bit, β2 16 (weights the VNNI kernels take), compressed
    once for the module: decoding neither changes it nor keeps state in it."""
    model = tiny_decoder("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True})
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_(model, SpQRConfig(bits=3, stat_group_size=16, nsamples=4, seqlen=32), calibration=windows,
              progress=False)
    return model


def decode(leans: list[LeanLlama], ids: torch.Tensor, prefill: int) -> list[torch.Tensor]:
    """Each decoder's logits [B, T - prefill, vocab]: a prefill of ``ids[:, :prefill]``, then one
    single-token step per later token."""
    for lean in leans:
        lean.forward(ids[:, :prefill], 0)
    return [torch.cat([lean.forward(ids[:, t:t + 1], t) for t in range(prefill, ids.shape[1])], 1) for lean in leans]


@pytest.mark.parametrize("batch", [1, 3])
def test_lean_llama_prefill_then_steps_match_hf_logits(tiny_llama, batch):
    ids = prompt(batch, 9)
    expected = tiny_llama(ids).logits
    lean = LeanLlama(tiny_llama, batch, 12)
    got = [lean.forward(ids[:, :5], 0)] + [lean.forward(ids[:, t:t + 1], t) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(got, 1), expected, rtol=1e-5, atol=1e-5)


def test_prefill_last_only_gives_the_last_logits_and_the_same_cache(tiny_llama):
    ids = prompt(2, 6, seed=5)
    full, last = LeanLlama(tiny_llama, 2, 8), LeanLlama(tiny_llama, 2, 8)
    everything, final = full.forward(ids, 0), last.forward(ids, 0, last_only=True)
    assert final.shape == (2, 1, everything.shape[-1])
    torch.testing.assert_close(final, everything[:, -1:], rtol=1e-6, atol=1e-6)
    assert torch.equal(full.k_cache, last.k_cache) and torch.equal(full.v_cache, last.v_cache)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("whole_step", [True, False])
def test_fused_decode_step_matches_the_torch_path(tiny_llama, batch, whole_step):
    """Dense fp32: the whole compiled step, or (one projection without a compiled kernel, a module
    subclass here) the per-layer compiled attention; both against the torch path."""
    if not whole_step:
        tiny_llama.model.layers[0].mlp.up_proj.__class__ = type("PlainLinear", (torch.nn.Linear,), {})
    ids = prompt(batch, 7, seed=3)
    fused, torch_path = LeanLlama(tiny_llama, batch, 12), LeanLlama(tiny_llama, batch, 12, fused=False)
    assert fused.fused and not torch_path.fused and fused.compiled_layers == whole_step
    for lean in (fused, torch_path):
        lean.forward(ids[:, :4], 0)
    for t in range(4, 7):
        torch.testing.assert_close(fused.forward(ids[:, t:t + 1], t), torch_path.forward(ids[:, t:t + 1], t),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.k_cache, torch_path.k_cache, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.v_cache, torch_path.v_cache)


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_layer_step_matches_the_module_path(spqr_llama, batch):
    """The step's wiring, on kernels continuous in their activations (int8 activations would turn the
    paths' fp32-level differences into whole rounding steps: the next test covers them)."""
    ids = prompt(batch, 8, seed=5)
    with wide_activations():
        compiled, modules = LeanLlama(spqr_llama, batch, 12), LeanLlama(spqr_llama, batch, 12, fused=False)
    assert compiled.compiled_layers and not modules.compiled_layers
    # q, k and v (and gate and up) read one input in one permutation: its first product prepares it for all
    shared = compiled.table.prepare_kinds.reshape(-1)[:-1].reshape(-1, 7) == -1
    assert (shared == [False, True, True, False, False, True, False]).all()
    got, expected = decode([compiled, modules], ids, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.k_cache, modules.k_cache, rtol=1e-4, atol=1e-4)
    with decoded_weights(spqr_llama):  # reference mode: the modules decode their weights, no compiled step
        assert not LeanLlama(spqr_llama, batch, 12).compiled_layers


def mixed_llama(model):
    """``model`` with a mix of formats: every MLP SpQR 3-bit, layer 0's q, k and v Quant 4-bit g32 (the
    int8-activation kernel on AVX2) and its o N:M 2:4, layer 1's q and o Bitmap 50%, its v BlockSparse
    1x16 at 50% and its k dense fp32, the head Quant 4-bit g32 on a symmetric grid (untied)."""
    def where(*parts):
        return lambda module, name: isinstance(module, torch.nn.Linear) and any(p in name for p in parts)

    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_(model, SpQRConfig(bits=3, stat_group_size=16, nsamples=4, seqlen=32), calibration=windows,
              filter_fn=where("mlp."), progress=False)  # calibrated methods filter names inside each block
    compress_(model, RTNConfig(bits=4, group_size=32), filter_fn=where(
        "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"), progress=False)
    compress_(model, MagnitudeConfig(sparsity=0.5, pattern="2:4"), filter_fn=where("layers.0.self_attn.o_proj"),
              progress=False)
    compress_(model, RTNConfig(bits=4, group_size=32, symmetric=True), filter_fn=where("lm_head"), progress=False)
    compress_(model, MagnitudeConfig(sparsity=0.5), filter_fn=where("layers.1.self_attn.q_proj",
                                                                    "layers.1.self_attn.o_proj"), progress=False)
    compress_(model, MagnitudeConfig(sparsity=0.5, pattern="block:1x16"), filter_fn=where("layers.1.self_attn.v_proj"),
              progress=False)
    return model


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_compiled_step_runs_a_mix_of_formats_as_the_module_path_does(tiny_llama, batch):
    """Every format's compiled kernel in one step, against the module path (the SpQR products on the
    22-bit kernel, continuous in its activations: int8 activations are checked on their own below).
    At batch 8 the 1x16 block product runs its register-blocked token rows in the step."""
    model = mixed_llama(tiny_llama)
    formats = {type(m).__name__ if not hasattr(m, "weight_format") else m.weight_format.format_name
               for m in model.modules() if isinstance(m, torch.nn.Linear) or hasattr(m, "weight_format")}
    assert formats == {"quant", "spqr", "nm", "bitmap", "block", "Linear"}
    with recorded_kernels() as counts, wide_activations():
        compiled = LeanLlama(model, batch, 12)
        modules = LeanLlama(model, batch, 12, fused=False)
    step = "sparsa.kernels.cpu.llama_step.compiled_step"
    assert compiled.compiled_layers and {fmt: n for (fmt, kernel), n in counts.items() if kernel == step} == {
        "quant": 4, "spqr": 6, "nm": 1, "bitmap": 2, "block": 1, "dense": 1}
    assert len(compiled.table.kernels) >= 5  # one kind per kernel and operand type, at least one per format
    quant_q8 = q8.HAS_AVX2 and batch <= Q8_TOKENS  # from 4 tokens the tile kernel runs Quant
    assert (q8.compiled(1) in compiled.table.kernels) == quant_q8
    assert (q8.compiled(1, 8) in compiled.table.kernels) == quant_q8  # the symmetric head
    got, expected = decode([compiled, modules], prompt(batch, 8, seed=7), 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.k_cache, modules.k_cache, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.v_cache, modules.v_cache, rtol=1e-4, atol=1e-4)


def test_compiled_step_gives_the_same_bytes_on_any_thread_count(tiny_llama):
    """The step's threads take chunks of independent output rows: one thread or three (more than
    the schedule was cut for), the logits and caches are bit-identical."""
    model = mixed_llama(tiny_llama)
    threads = numba.get_num_threads()
    runs = []
    try:
        for count in (threads, 1, min(3, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            lean = LeanLlama(model, 2, 12) if not runs else runs[0][0]
            if runs:
                lean.k_cache.zero_()
                lean.v_cache.zero_()
            runs.append((lean, decode([lean], prompt(2, 8, seed=3), 4)[0], lean.k_cache.clone()))
    finally:
        numba.set_num_threads(threads)
    assert runs[0][0].compiled_layers
    for _, logits, cache in runs[1:]:
        assert torch.equal(logits, runs[0][1]) and torch.equal(cache, runs[0][2])


@pytest.mark.skipif(not HAS_VNNI, reason="this CPU lacks AVX-512 VNNI (no avx512_vnni in /proc/cpuinfo): "
                                         "every SpQR product here already takes the fp32 path")
@pytest.mark.parametrize("batch", [1, 3])
def test_vnni_decode_paths_match_the_forced_fp32_path(spqr_llama, batch, one_thread):
    weights = [m.weight_format for _, m in sparse_linears(spqr_llama)]
    with wide_activations():
        compiled, modules = LeanLlama(spqr_llama, batch, 12), LeanLlama(spqr_llama, batch, 12, fused=False)
    q8_compiled, q8_modules = LeanLlama(spqr_llama, batch, 12), LeanLlama(spqr_llama, batch, 12, fused=False)
    with fp32_path():  # bound inside: fp32 tiles for every projection, in the compiled step too
        assert not any(takes_vnni(w) for w in weights)
        fp32 = LeanLlama(spqr_llama, batch, 12, fused=False)  # the path of `modules` but for the kernels
        fp32_compiled = LeanLlama(spqr_llama, batch, 12)
    assert all(takes_vnni(w) and takes_q8(w, batch) for w in weights)
    assert all(lean.compiled_layers for lean in (compiled, q8_compiled, fp32_compiled))
    kernels = [set(lean.table.kernels) - {DENSE} for lean in (compiled, q8_compiled, fp32_compiled)]  # the head is dense
    assert kernels[0].isdisjoint(kernels[1]) and kernels[0].isdisjoint(kernels[2]) and kernels[1].isdisjoint(kernels[2])
    on_compiled, on_modules, on_q8, on_q8_modules, on_fp32, on_fp32_compiled = decode(
        [compiled, modules, q8_compiled, q8_modules, fp32, fp32_compiled], prompt(batch, 8, seed=5), 5)
    torch.testing.assert_close(on_fp32_compiled, on_fp32, rtol=1e-5, atol=1e-5)
    assert not torch.equal(on_modules, on_fp32)  # VNNI rounds activations to 22 bits: other code, other bits
    # that rounding (2^-21 of a token's largest activation) moved these logits (|logit| ~1) by ~1e-6 over
    # two layers; 1e-5 leaves 10x and still fails a split that dropped the low int8 part (~2^-14)
    torch.testing.assert_close(on_compiled, on_fp32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(on_modules, on_fp32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.k_cache, fp32.k_cache, rtol=1e-5, atol=1e-5)
    # int8 activations per group of 16 (decode, either path) round each activation by up to 1/254 of its
    # group's largest: a few 1e-3 on these logits (|logit| ~1), against the 22-bit path's 1e-6
    for got in (on_q8, on_q8_modules):
        error = (got - on_fp32).abs().max()
        assert 1e-5 < error < Q8_LOGIT_ERROR, float(error)
def test_lean_llama_bf16_decodes_on_fp32_activations_in_the_compiled_step(tiny_llama):
    """A bf16 model on the CPU: the compiled step reads its bf16 weights, widened exactly, on fp32
    activations (the fp32 model with bf16-rounded weights, to fp32 rounding; its prefill runs torch's
    bf16 products); ``fused=False`` keeps torch's bf16 path."""
    ids = prompt(2, 7, seed=2)
    model = tiny_llama.to(torch.bfloat16)  # in place
    reference = LeanLlama(copy.deepcopy(model).float(), 2, 8)  # the same weights in fp32
    reference.forward(ids[:, :4], 0)
    lean, torch_path = LeanLlama(model, 2, 8), LeanLlama(model, 2, 8, fused=False)
    assert lean.fused and lean.compiled_layers and lean.dtype == torch.float32 and not torch_path.fused
    assert torch_path.forward(ids[:, :4], 0).dtype == torch.bfloat16
    prefill = lean.forward(ids[:, :4], 0)
    assert prefill.dtype == torch.float32
    lean.k_cache.copy_(reference.k_cache)  # from here on, the steps alone: the same cache, the same tokens
    lean.v_cache.copy_(reference.v_cache)
    for t in range(4, 7):
        torch.testing.assert_close(lean.forward(ids[:, t:t + 1], t), reference.forward(ids[:, t:t + 1], t),
                                   rtol=1e-5, atol=1e-5)


def test_step_bytes_count_every_weight_the_compiled_step_reads_once(tiny_llama):
    """Dense fp32: each projection's and the head's weight (a tied head's once) and the norms; a
    bf16 model half the projections' bytes; none without a compiled step."""
    linears = {m.weight.data_ptr(): m.weight.nbytes for m in tiny_llama.modules() if isinstance(m, torch.nn.Linear)}
    norms = sum(m.weight.nbytes for name, m in tiny_llama.named_modules() if name.endswith("norm"))
    assert LeanLlama(tiny_llama, 1, 4).step_bytes() == sum(linears.values()) + norms
    assert LeanLlama(tiny_llama, 1, 4, fused=False).step_bytes() is None
    half = LeanLlama(copy.deepcopy(tiny_llama).to(torch.bfloat16), 1, 4).step_bytes()
    assert half == sum(linears.values()) // 2 + norms  # the norms are read as fp32 copies


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
