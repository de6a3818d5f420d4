"""The numba Quant kernel against the reference (decode the weight, F.linear)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.formats import Quant
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu.quant import quant_linear


TOKEN_COUNTS = [0, 1, 9, 16, 17, 32, 33, 40]  # the README's 0 to 40 tokens: its ends, either side of 16 and 32


def check_quant_linear(bits: int, group_size: int, out: int, inp: int, tokens: int, with_bias: bool,
                       seed: int) -> None:
    """``quant_linear`` on a random [out, inp] W quantized to ``bits`` in groups of ``group_size``
    and ``tokens`` random activations lies within fp32 rounding of the exact product."""
    g = torch.Generator().manual_seed(seed)
    fmt = Quant.from_dense(torch.randn(out, inp, generator=g) * 3, bits=bits, group_size=group_size)
    x = torch.randn(tokens, inp, generator=g)
    bias = torch.randn(out, generator=g) if with_bias else None
    y = quant_linear(x, fmt, bias)
    W = fmt.to_dense().double()
    exact = x.double() @ W.T + (0 if bias is None else bias.double())
    bound = 1e-5 * (x.double().abs() @ W.abs().T) + 1e-6  # fp32 rounding of the sum
    assert y.shape == (tokens, out) and bool(((y.double() - exact).abs() <= bound).all())


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 3, 4, 8]), st.sampled_from([16, 32, 5]), st.integers(1, 40), st.integers(1, 70),
       st.integers(0, 40), st.booleans(), st.integers(0, 2**16))
def test_quant_linear_random_weights_match_reference(bits, group_size, out, inp, tokens, with_bias, seed):
    check_quant_linear(bits, group_size, out, inp, tokens, with_bias, seed)


@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_quant_linear_each_token_count_matches_reference(tokens):
    check_quant_linear(4, 32, 37, 70, tokens, True, seed=tokens)  # ragged rows, a short last group


def test_quant_linear_dispatches_and_keeps_leading_dims():
    fmt = Quant.from_dense(torch.randn(48, 64), bits=4, group_size=32)
    x = torch.randn(2, 3, 64)
    assert select_linear_kernel(fmt, x) is quant_linear
    torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), rtol=1e-4, atol=1e-4)
