"""Layer-sequential calibration driver on a tiny Llama."""

import pytest
import torch
from torch import nn

from sparsa.compress import GPTQConfig, SparseGPTConfig, SpQRConfig, WandaConfig, compress_
from sparsa.data import calibration_windows
from sparsa.errors import SparsaError
from sparsa.formats import NM, Quant, SpQR
from sparsa.nn import SparseLinear, sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint

WINDOWS = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
SMALL = {"nsamples": 4, "seqlen": 32}


def logits(model):
    with torch.no_grad():
        return model(WINDOWS[:1]).logits


@pytest.mark.parametrize("config, fmt", [(GPTQConfig(bits=4, group_size=32, **SMALL), Quant),
                                         (SpQRConfig(bits=3, stat_group_size=16, **SMALL), SpQR),
                                         (SparseGPTConfig(pattern="2:4", **SMALL), NM),
                                         (WandaConfig(pattern="2:4", **SMALL), NM)],
                         ids=lambda v: getattr(v, "method", getattr(v, "__name__", "")))
def test_compress_sequential_replaces_every_linear_and_reloads(tiny_llama, tiny_tokenizer, tmp_path, config, fmt):
    summary = compress_(tiny_llama, config, calibration=WINDOWS, progress=False)
    layers = list(sparse_linears(tiny_llama))
    assert len(layers) == summary.layers == 14 and all(type(m.weight_format) is fmt for _, m in layers)
    assert len(summary.block_errors) == 2 and all(0 <= e < 1 for e in summary.block_errors)
    assert not isinstance(tiny_llama.lm_head, SparseLinear)
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(tiny_llama))


def test_compress_sequential_is_deterministic(tiny_llama):
    import copy

    twin = copy.deepcopy(tiny_llama)
    config = SpQRConfig(bits=3, stat_group_size=16, **SMALL)
    first = compress_(tiny_llama, config, calibration=WINDOWS, progress=False)
    second = compress_(twin, config, calibration=WINDOWS, progress=False)
    assert first.block_errors == second.block_errors
    assert torch.equal(logits(tiny_llama), logits(twin))


def test_compress_sequential_gptq_beats_rtn_on_block_error(tiny_llama):
    import copy

    from sparsa.compress import RTNConfig

    rtn_model = copy.deepcopy(tiny_llama)
    dense = logits(tiny_llama)
    compress_(tiny_llama, GPTQConfig(bits=3, group_size=16, **SMALL), calibration=WINDOWS, progress=False)
    compress_(rtn_model, RTNConfig(bits=3, group_size=16), progress=False)
    assert (logits(tiny_llama) - dense).square().mean() < (logits(rtn_model) - dense).square().mean()


def test_compress_calibrated_method_without_windows_raises(tiny_llama):
    with pytest.raises(SparsaError, match="--method gptq needs calibration windows"):
        compress_(tiny_llama, GPTQConfig(), progress=False)


def test_compress_sequential_unsupported_architecture_raises():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(SparsaError, match="Sequential: the calibration driver supports decoder models"):
        compress_(model, GPTQConfig(**SMALL), calibration=WINDOWS, progress=False)


def test_compress_sequential_nan_weight_raises_naming_layer(tiny_llama):
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(SparsaError, match="model.layers.1.mlp.up_proj: weight holds inf/nan"):
        compress_(tiny_llama, GPTQConfig(group_size=32, **SMALL), calibration=WINDOWS, progress=False)


def test_calibration_windows_distinct_seeded_and_bounded():
    ids = torch.arange(1000)
    a = calibration_windows(ids, 5, 100, seed=0)
    assert a.shape == (5, 100) and torch.equal(a, calibration_windows(ids, 5, 100, seed=0))
    starts = a[:, 0].tolist()
    assert starts == sorted(starts) and len(set(starts)) == 5 and all(s % 100 == 0 for s in starts)
    assert not torch.equal(a, calibration_windows(ids, 5, 100, seed=1))
    with pytest.raises(SparsaError, match="calib: 1000 calibration tokens hold 10 windows of --seqlen 100, "
                                          "fewer than --nsamples 11"):
        calibration_windows(ids, 11, 100, seed=0, source="calib")


@pytest.mark.parametrize("config", [SpQRConfig(bits=3, stat_group_size=16, **SMALL), GPTQConfig(bits=4, group_size=32, **SMALL)],
                         ids=lambda c: c.method)
def test_compress_with_the_head_unties_it_and_reloads(tiny_llama, tiny_tokenizer, tmp_path, config):
    from sparsa.nn import all_linears

    embedding = tiny_llama.model.embed_tokens.weight.detach().clone()
    summary = compress_(tiny_llama, config, calibration=WINDOWS, progress=False, filter_fn=all_linears)
    assert summary.layers == 15 and isinstance(tiny_llama.lm_head, SparseLinear)
    assert tiny_llama.config.tie_word_embeddings is False
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embedding)  # the lookup table stays dense
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert isinstance(loaded.lm_head, SparseLinear) and torch.equal(loaded.model.embed_tokens.weight, embedding)
    assert torch.equal(logits(loaded), logits(tiny_llama))


def test_compress_auto_refuses_the_head(tiny_llama):
    from sparsa.compress import AutoConfig
    from sparsa.nn import all_linears

    with pytest.raises(SparsaError, match="--method auto does not compress the output head"):
        compress_(tiny_llama, AutoConfig(budget=3.5, **SMALL), calibration=WINDOWS, progress=False, filter_fn=all_linears)
