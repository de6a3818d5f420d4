"""Tests for sparsa.compress.api.compress_ and the method registry it dispatches through."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsa.compress import METHODS, CompressSummary, MagnitudeConfig, RTNConfig, compress_, get_method
from sparsa.errors import SparsaError
from sparsa.formats import NM, Bitmap, BlockSparse, Quant
from sparsa.nn.sparse_linear import SparseLinear


class TinyLM(nn.Module):
    """Two hidden Linears (one without bias) inside a Sequential, plus an ``lm_head`` Linear."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16, bias=False))
        self.lm_head = nn.Linear(16, 8)
        self.to(dtype)

    def forward(self, x):
        return self.lm_head(self.body(x))


def reference_forward(model: TinyLM, x: torch.Tensor) -> torch.Tensor:
    """The same network computed with F.linear on each SparseLinear's decoded weight."""
    first, last = model.body[0], model.body[2]
    h = F.linear(x, first.weight_format.to_dense(x.dtype), first.bias)
    h = F.linear(torch.relu(h), last.weight_format.to_dense(x.dtype), None)
    return F.linear(h, model.lm_head.weight, model.lm_head.bias)


def test_get_method_unknown_name_raises_listing_known():
    with pytest.raises(SparsaError, match=re.escape(
            "unknown --method 'obc'; choose from auto, gptq, magnitude, rtn, sparsegpt, spqr, wanda")):
        get_method("obc")


def test_methods_table_holds_builtin_methods():
    assert sorted(METHODS) == ["auto", "gptq", "magnitude", "rtn", "sparsegpt", "spqr", "wanda"]


def test_compress_rtn_tiny_lm_replaces_all_linears_but_lm_head():
    model = TinyLM()
    head = model.lm_head
    summary = compress_(model, RTNConfig(bits=4, group_size=16), progress=False)
    assert isinstance(model.body[0], SparseLinear) and isinstance(model.body[2], SparseLinear)
    assert isinstance(model.body[1], nn.ReLU)
    assert model.lm_head is head and type(head) is nn.Linear
    assert all(isinstance(m.weight_format, Quant) for m in (model.body[0], model.body[2]))
    assert isinstance(summary, CompressSummary)
    assert summary.method == "rtn" and summary.layers == 2


def test_compress_rtn_tiny_lm_summary_counts_exact_bytes():
    summary = compress_(TinyLM(), RTNConfig(bits=4, group_size=16), progress=False)
    params = 32 * 16 + 16 * 32
    compressed = (math.ceil(32 * 16 * 4 / 8) + 2 * 2 * 32 * 1) + (math.ceil(16 * 32 * 4 / 8) + 2 * 2 * 16 * 2)
    assert summary.params == params
    assert summary.compressed_bytes == compressed == 768
    assert summary.dense_bytes == 4 * params
    assert summary.bits_per_param == 8 * compressed / params == 6.0
    assert summary.seconds >= 0


def test_compress_rtn_tiny_lm_outputs_equal_decoded_reference():
    model = TinyLM()
    x = torch.randn(2, 3, 16)
    compress_(model, RTNConfig(bits=3, group_size=8), progress=False)
    # the Quant CPU kernel sums in its own order: the decoded reference to fp32 rounding
    torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_compress_rtn_keeps_bias_values():
    model = TinyLM()
    bias = model.body[0].bias.detach().clone()
    compress_(model, RTNConfig(bits=8, group_size=16), progress=False)
    assert torch.equal(model.body[0].bias, bias)
    assert model.body[2].bias is None


@pytest.mark.parametrize("pattern, fmt_cls, compressed", [
    # Bitmap: ceil(n / 8) + nnz * 4 with nnz = n / 2
    ("unstructured", Bitmap, (64 + 256 * 4) + (64 + 256 * 4)),
    # NM 2:4 fp32: exactly 17 bits per param
    ("2:4", NM, 17 * 1024 // 8),
    # BlockSparse 1x4: 4 * (R + 1) + 2 * nnzb + nnzb * 1 * 4 * 4, nnzb = half the blocks
    ("block:1x4", BlockSparse, (4 * 33 + 2 * 64 + 64 * 16) + (4 * 17 + 2 * 64 + 64 * 16)),
])
def test_compress_magnitude_tiny_lm_summary_and_outputs_are_exact(pattern, fmt_cls, compressed):
    model = TinyLM()
    x = torch.randn(4, 16)
    summary = compress_(model, MagnitudeConfig(pattern=pattern), progress=False)
    assert summary.method == "magnitude" and summary.layers == 2
    assert isinstance(model.body[0].weight_format, fmt_cls)
    assert summary.params == 1024 and summary.dense_bytes == 4096
    assert summary.compressed_bytes == compressed
    assert summary.bits_per_param == 8 * compressed / 1024
    # the Bitmap and BlockSparse CPU kernels sum in their own order: the reference to fp32 rounding
    torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_compress_magnitude_bf16_model_keeps_bf16_values_and_counts_2_bytes():
    model = TinyLM(torch.bfloat16)
    summary = compress_(model, MagnitudeConfig(pattern="2:4"), progress=False)
    assert model.body[0].values.dtype == torch.bfloat16
    assert summary.dense_bytes == 2 * 1024
    assert summary.bits_per_param == 9.0
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    assert torch.equal(model(x), reference_forward(model, x))


def test_compress_plain_sequential_replaces_every_linear():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4))
    summary = compress_(model, RTNConfig(bits=2, group_size=8), progress=False)
    assert [type(m) for m in model] == [SparseLinear, nn.GELU, SparseLinear]
    assert summary.layers == 2 and summary.params == 96
    assert summary.compressed_bytes == (16 + 2 * 2 * 8) + (8 + 2 * 2 * 4)


def test_compress_custom_filter_fn_includes_lm_head():
    model = TinyLM()
    summary = compress_(model, RTNConfig(bits=4, group_size=16), progress=False,
                        filter_fn=lambda module, fqn: isinstance(module, nn.Linear))
    assert isinstance(model.lm_head, SparseLinear)
    assert summary.layers == 3 and summary.params == 1024 + 128


def test_compress_filter_selecting_nothing_returns_empty_summary():
    model = TinyLM()
    summary = compress_(model, RTNConfig(), progress=False, filter_fn=lambda module, fqn: False)
    assert (summary.layers, summary.params, summary.compressed_bytes, summary.dense_bytes) == (0, 0, 0, 0)
    assert summary.bits_per_param == 0.0
    assert type(model.body[0]) is nn.Linear


def test_compress_summary_to_dict_has_all_fields():
    summary = compress_(TinyLM(), RTNConfig(bits=4, group_size=16), progress=False)
    d = summary.to_dict()
    assert set(d) == {"method", "layers", "params", "compressed_bytes", "dense_bytes", "bits_per_param", "seconds",
                      "block_errors", "choices"}
    assert d["compressed_bytes"] == 768


def test_compress_rtn_group_size_not_dividing_leaves_short_last_group():
    model = nn.Sequential(nn.Linear(24, 8))
    summary = compress_(model, RTNConfig(bits=4, group_size=16), progress=False)
    fmt = model[0].weight_format
    assert fmt.scale.shape == (8, 2) and summary.compressed_bytes == 8 * 24 * 4 // 8 + 2 * 2 * 8 * 2


def test_compress_magnitude_nm_not_dividing_raises_naming_fqn():
    model = TinyLM()
    model.body[0] = nn.Linear(16, 32)  # in 16 is a multiple of 4
    model.body[2] = nn.Linear(30, 16)
    with pytest.raises(SparsaError, match=re.escape("body.2: in_features=30 is not a multiple of M=4")):
        compress_(model, MagnitudeConfig(pattern="2:4"), progress=False)


def test_compress_root_module_is_linear_raises():
    model = nn.Linear(8, 8)
    with pytest.raises(SparsaError, match="the model itself is a selected layer"):
        compress_(model, RTNConfig(bits=4, group_size=8), progress=False)
    assert isinstance(model, nn.Linear) and not list(model.children())


def test_compress_aliased_linear_replaced_everywhere_once():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a

    model = Aliased()
    summary = compress_(model, RTNConfig(bits=4, group_size=8), progress=False)
    assert isinstance(model.a, SparseLinear) and model.b is model.a
    assert summary.layers == 1 and summary.params == 64
