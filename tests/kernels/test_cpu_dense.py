"""The dense decode kernel (fp32 and bf16 weights) and the prefill GEMM against ``F.linear`` on the fp32 weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsa.kernels.cpu.calls import parallel
from sparsa.kernels.cpu.dense import DENSE, ONEDNN_LINEAR, dense_linear, dense_step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_features,in_features,tokens,tasks", [(1, 3, 1, 8), (37, 50, 2, 8), (300, 64, 5, 3),
                                                                   (64, 129, 1, 1)])
def test_dense_rows_matches_f_linear(out_features, in_features, tokens, tasks, dtype):
    """bf16 weights widen exactly: the product is the fp32 product of the bf16-rounded weights."""
    g = torch.Generator().manual_seed(out_features)
    w, x = torch.randn(out_features, in_features, generator=g).to(dtype), torch.randn(tokens, in_features, generator=g)
    y = np.full((tokens, out_features), np.nan, np.float32)
    kernel, operand = dense_step(w)
    assert kernel is DENSE and operand[0].ctypes.data == w.data_ptr()  # read in place
    parallel(kernel)(x.numpy(), operand, kernel.scratch_for(operand, tokens), y, tasks)
    torch.testing.assert_close(torch.from_numpy(y), F.linear(x, w.float()), rtol=1e-5, atol=1e-5)


def test_dense_step_declines_what_the_kernel_cannot_read():
    w = torch.randn(8, 6)
    assert dense_step(w.half()) is None and dense_step(w.t()) is None and dense_step(w[None]) is None


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("lead,in_features,out_features", [((1,), 576, 192), ((3, 17), 64, 300), ((2, 0), 8, 5),
                                                           ((33,), 1536, 576)])
def test_dense_linear_matches_f_linear_within_fp32_rounding(lead, in_features, out_features, with_bias):
    g = torch.Generator().manual_seed(in_features)
    x = torch.randn(*lead, in_features, generator=g)
    w = torch.nn.Parameter(torch.randn(out_features, in_features, generator=g), requires_grad=False)
    bias = torch.randn(out_features, generator=g) if with_bias else None
    y = dense_linear(x, w, bias)
    exact = (x.double() @ w.double().T + (0 if bias is None else bias.double()))
    bound = 1e-5 * (x.double().abs() @ w.double().abs().T) + 1e-5
    assert y.shape == (*lead, out_features) and y.dtype == torch.float32
    assert bool(((y.double() - exact).abs() <= bound).all())


def test_dense_linear_leaves_other_dtypes_and_weight_subclasses_to_f_linear(monkeypatch):
    """Only plain fp32 weights take oneDNN's op; anything else is exactly ``F.linear``."""
    calls = []
    if ONEDNN_LINEAR:
        op = torch.ops.mkldnn._linear_pointwise
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or op(*a))
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    dense_linear(x, w)
    assert calls == ([1] if ONEDNN_LINEAR else [])
    xb, wb = x.bfloat16(), w.bfloat16()
    assert torch.equal(dense_linear(xb, wb), F.linear(xb, wb)) and calls == ([1] if ONEDNN_LINEAR else [])
