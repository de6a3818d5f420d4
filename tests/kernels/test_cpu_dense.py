"""The dense decode kernel (fp32 and bf16 weights) against ``F.linear`` on the fp32 weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsa.kernels.cpu.calls import parallel
from sparsa.kernels.cpu.dense import DENSE, dense_step


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
