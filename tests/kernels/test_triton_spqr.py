"""The Triton SpQR kernels against the decoded weight: under ``TRITON_INTERPRET=1`` on the CPU
(fp32, fp16), on the GPU where there is one (fp16, bf16 too)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.formats import SpQR
from sparsa.kernels.dispatch import LINEAR_KERNELS
from sparsa.kernels.triton.spqr import spqr_linear_triton
from test_cpu_spqr import spqr_case
from triton_cases import DEVICE, DTYPES, needs_triton

pytestmark = needs_triton


@settings(max_examples=25, deadline=None)
@given(spqr_case(), st.sampled_from(DTYPES))
def test_triton_spqr_random_formats_match_decoded_weight(case, dtype):
    """2..8-bit codes and statistics, β1 3..16, β2 1..32, permutations, 0-50% outliers, 0..9 tokens."""
    fmt, x, bias = case
    W = fmt.to_dense()
    fmt, x = fmt.to(DEVICE), x.to(DEVICE, dtype)
    bias = None if bias is None else bias.to(DEVICE, dtype)
    y = spqr_linear_triton(x, fmt, bias)
    assert y.shape == (x.shape[0], W.shape[0]) and y.dtype == dtype
    assert_within_rounding(y, x, W, bias)


def assert_within_rounding(y: torch.Tensor, x: torch.Tensor, W: torch.Tensor, bias) -> None:
    """|y - exact| within the rounding of the kernel's arithmetic: each weight rounded to the
    activations' dtype and every product summed in fp32 (``u * sum_k |w_k x_k|``), then the
    output rounded to that dtype (``u * |exact|``); random SpQR statistics make weights in the
    thousands whose sums cancel, so the bound follows the terms, not the result."""
    u = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[x.dtype]
    xd, Wd = x.cpu().double(), W.cpu().double()
    exact = xd @ Wd.T + (0 if bias is None else bias.cpu().double())
    bound = u * (xd.abs() @ Wd.abs().T + exact.abs()) + 1e-6
    error = (y.cpu().double() - exact).abs()
    assert bool((error <= bound).all()), float((error / bound).max())


@pytest.mark.parametrize("tokens", [1, 17, 130])
def test_triton_spqr_3_bit_token_tiles_rows_past_one_tile(tokens):
    g = torch.Generator().manual_seed(tokens)
    out, inp, groups = 96, 80, 5

    def stats():
        return torch.stack([torch.rand(out // 16, groups, generator=g) * 0.1,
                            torch.randn(out // 16, groups, generator=g)], -1).half()

    fmt = SpQR.from_parts(codes=torch.randint(0, 8, (out, inp), generator=g), perm=torch.randperm(inp, generator=g),
                          scale_codes=torch.randint(0, 8, (out, groups), generator=g),
                          zero_codes=torch.randint(0, 8, (out, groups), generator=g), scale_stats=stats(),
                          zero_stats=stats(), outlier_mask=torch.rand(out, inp, generator=g) < 0.02,
                          outlier_values_dense=torch.randn(out, inp, generator=g) * 10, bits=3, group_size=16,
                          stat_bits=3, stat_group_size=16)
    x = torch.randn(tokens, inp, generator=g).to(DEVICE, torch.float16)
    assert_within_rounding(spqr_linear_triton(x, fmt.to(DEVICE)), x, fmt.to_dense(), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits, b1, stat_bits, b2, groups", [(3, 16, 3, 16, 65), (2, 3, 2, 1, 20), (8, 8, 8, 2, 9),
                                                             (3, 4, 5, 4, 7), (4, 128, 3, 2, 3)])
def test_triton_spqr_one_token(bits, b1, stat_bits, b2, groups, dtype):
    """The one-token kernel: groups padded to a power of two of slots (β1 3, 4, 8), groups wider than
    a word, rows not a multiple of the rows per program, 1040 inputs (two steps), 5% outliers, bias."""
    g = torch.Generator().manual_seed(bits * 100 + b1)
    out, inp = 18 * b2 if b2 < 16 else 48, b1 * groups

    def stats():
        return torch.stack([torch.rand(out // b2, groups, generator=g) * 0.1,
                            torch.randn(out // b2, groups, generator=g)], -1).half()

    fmt = SpQR.from_parts(codes=torch.randint(0, 2**bits, (out, inp), generator=g),
                          perm=torch.randperm(inp, generator=g),
                          scale_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g),
                          zero_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g), scale_stats=stats(),
                          zero_stats=stats(), outlier_mask=torch.rand(out, inp, generator=g) < 0.05,
                          outlier_values_dense=torch.randn(out, inp, generator=g) * 10, bits=bits, group_size=b1,
                          stat_bits=stat_bits, stat_group_size=b2)
    x, bias = torch.randn(1, inp, generator=g).to(DEVICE, dtype), torch.randn(out, generator=g).to(DEVICE, dtype)
    y = spqr_linear_triton(x, fmt.to(DEVICE), bias)
    assert y.shape == (1, out) and y.dtype == dtype
    assert_within_rounding(y, x, fmt.to_dense(), bias)


def test_triton_spqr_filed_for_cuda_half():
    assert all(LINEAR_KERNELS[("spqr", "cuda", d)].kernel is spqr_linear_triton for d in (torch.float16, torch.bfloat16))
