"""The numba Bitmap kernel against the reference (decode the weight, F.linear)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import Bitmap
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu.bitmap import bitmap_linear


TOKEN_COUNTS = [0, 1, 9, 16, 17, 32, 33, 40]  # the README's 0 to 40 tokens: its ends, either side of 16 and 32


def check_bitmap_linear(out: int, inp: int, sparsity: float, tokens: int, with_bias: bool, seed: int) -> None:
    """``bitmap_linear`` on a random [out, inp] W (each weight zero with probability ``sparsity``)
    and ``tokens`` random activations lies within fp32 rounding of the exact product."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g) * (torch.rand(out, inp, generator=g) >= sparsity)
    fmt = Bitmap.from_dense(W)
    x = torch.randn(tokens, inp, generator=g)
    bias = torch.randn(out, generator=g) if with_bias else None
    y = bitmap_linear(x, fmt, bias)
    exact = x.double() @ W.double().T + (0 if bias is None else bias.double())
    bound = 1e-5 * (x.double().abs() @ W.double().abs().T) + 1e-6  # fp32 rounding of the sum
    assert y.shape == (tokens, out) and bool(((y.double() - exact).abs() <= bound).all())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.integers(0, 40),
       st.booleans(), st.integers(0, 2**16))
def test_bitmap_linear_random_weights_match_reference(out, inp, sparsity, tokens, with_bias, seed):
    check_bitmap_linear(out, inp, sparsity, tokens, with_bias, seed)


@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_bitmap_linear_each_token_count_matches_reference(tokens):
    check_bitmap_linear(37, 70, 0.5, tokens, True, seed=tokens)  # ragged rows and mask words


def test_bitmap_linear_dispatch_fp32_only():
    W = torch.randn(24, 40) * (torch.rand(24, 40) > 0.5)
    x = torch.randn(2, 3, 40)
    fmt = Bitmap.from_dense(W)
    assert select_linear_kernel(fmt, x) is bitmap_linear
    torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), rtol=1e-5, atol=1e-5)
    half = Bitmap.from_dense(W.bfloat16())
    assert select_linear_kernel(half, x) is linear_reference
    with pytest.raises(SparsaError, match="needs fp32 values"):
        bitmap_linear(x, half)
