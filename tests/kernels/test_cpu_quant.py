"""The numba Quant kernels against their references: the fp32 tiles against the exact product (decode
the weight, F.linear), the int8-activation kernel against :func:`~sparsa.kernels.cpu.q8.q8_reference`
(the same activation rounding in torch) and, looser, against the exact product."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torch.nn.functional as F

from sparsa.formats import Quant
from sparsa.formats.quant import pad_groups
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu import q8
from sparsa.kernels.cpu.q8 import q8_activations, q8_reference
from sparsa.kernels.cpu.quant import Q8_TOKENS, fits_q8, quant_linear
from sparsa.kernels.cpu.spqr import fp32_path


TOKEN_COUNTS = [0, 1, 9, 16, 17, 32, 33, 40]  # the README's 0 to 40 tokens: its ends, either side of 16 and 32


def check_quant_linear(bits: int, group_size: int, out: int, inp: int, tokens: int, with_bias: bool,
                       seed: int, symmetric: bool = False) -> None:
    """``quant_linear`` on a random [out, inp] W quantized to ``bits`` in groups of ``group_size``
    (min-max or symmetric grids) and ``tokens`` random activations: on the fp32 tiles within fp32
    rounding of the exact product; where the int8-activation kernel takes the weight and token
    count, within fp32 rounding of its reference and within the activations' rounding of the exact
    product."""
    g = torch.Generator().manual_seed(seed)
    fmt = Quant.from_dense(torch.randn(out, inp, generator=g) * 3, bits=bits, group_size=group_size,
                           symmetric=symmetric)
    x = torch.randn(tokens, inp, generator=g)
    bias = torch.randn(out, generator=g) if with_bias else None
    W = fmt.to_dense().double()
    exact = x.double() @ W.T + (0 if bias is None else bias.double())
    scale = x.double().abs() @ W.abs().T
    bound = 1e-5 * scale + 1e-6  # fp32 rounding of the sum
    with fp32_path():
        y = quant_linear(x, fmt, bias)
    assert y.shape == (tokens, out) and bool(((y.double() - exact).abs() <= bound).all())
    y = quant_linear(x, fmt, bias)
    if not fits_q8(fmt, tokens):
        assert bool(((y.double() - exact).abs() <= bound).all())
    else:
        width = -(-inp // group_size) * group_size
        q = pad_groups(fmt.unpacked_codes(), group_size).reshape(out, width)
        ref = q8_reference(F.pad(x, (0, width - inp)), q, fmt.scale, fmt.group_minimum(), group_size)
        ref = ref.double() + (0 if bias is None else bias.double())
        assert y.shape == (tokens, out) and bool(((y.double() - ref).abs() <= 2 * bound).all())
        # the activations' rounding, at most max|x| / 254 per activation, meets s * q (the minimum's term is exact)
        sq = (q[:, :inp].double() * fmt.scale.double().repeat_interleave(group_size, 1)[:, :inp]).abs()
        rounding = x.abs().amax(1, keepdim=True).double() / 254 * sq.sum(1)[None] + 1e-6
        assert bool(((y.double() - exact).abs() <= rounding + bound).all())


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 3, 4, 8]), st.sampled_from([16, 32, 5]), st.integers(1, 40), st.integers(1, 70),
       st.integers(0, 40), st.booleans(), st.integers(0, 2**16), st.booleans())
def test_quant_linear_random_weights_match_reference(bits, group_size, out, inp, tokens, with_bias, seed, symmetric):
    check_quant_linear(bits, group_size, out, inp, tokens, with_bias, seed, symmetric)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_quant_linear_each_token_count_matches_reference(tokens, symmetric):
    check_quant_linear(4, 32, 37, 70, tokens, True, seed=tokens, symmetric=symmetric)  # ragged rows, a short last group


@pytest.mark.skipif(not q8.HAS_AVX2, reason="this CPU lacks AVX2")
def test_q8_kernel_of_a_symmetric_weight_reads_no_minimum():
    """The symmetric q8 kernel computes the minimum from the scale: its layout has no minimum array
    (fewer bytes per token), and it differs from the min-max kernel only in that."""
    from sparsa.kernels.cpu.quant import quant_step

    weight = Quant.from_dense(torch.randn(16, 64), bits=4, group_size=32, symmetric=True)
    kernel, operand = quant_step(weight, 1)
    assert kernel is q8.compiled(1, 8) and kernel is not q8.compiled(1) and operand[2].size == 0
    stored = Quant(shape=weight.shape, bits=4, group_size=32, codes=weight.codes, scale=weight.scale,
                   minimum=weight.group_minimum())  # the same grid with its minimum stored
    x = torch.randn(3, 64)
    assert torch.equal(quant_linear(x, weight), quant_linear(x, stored))


def test_quant_linear_dispatches_and_keeps_leading_dims():
    fmt = Quant.from_dense(torch.randn(48, 64), bits=4, group_size=32)
    x = torch.randn(2, 3, 64)
    assert select_linear_kernel(fmt, x) is quant_linear
    assert torch.equal(linear(x, fmt), quant_linear(x.reshape(6, 64), fmt).reshape(2, 3, 48))
    with fp32_path():
        torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not q8.HAS_AVX2, reason="this CPU lacks AVX2")
def test_q8_kernel_takes_4_bit_groups_of_32_columns_at_decode_and_nothing_else():
    def fits(bits, group_size, tokens=1):
        return fits_q8(Quant.from_dense(torch.randn(8, 64), bits=bits, group_size=group_size), tokens)

    assert fits(4, 32) and fits(3, 64) and fits(4, 32, Q8_TOKENS) and not fits(4, 32, Q8_TOKENS + 1)
    assert not fits(8, 32) and not fits(4, 16)
    with fp32_path():
        assert not fits(4, 32)


def test_q8_activations_round_each_block_of_32_to_int8():
    x = torch.tensor([[0.0] * 32 + [1.0, -2.0, 0.5] + [0.0] * 29])
    xq, d, sums = q8_activations(x)
    assert d[0, 0] == 1 and d[0, 1] == torch.tensor(2.0) / 127 and sums.tolist() == [[0.0, -0.5]]
    assert xq[0, 32:35].tolist() == [64, -127, 32] and not xq[0, :32].any()  # 63.5 rounds to even


@pytest.mark.skipif(not q8.HAS_AVX2, reason="this CPU lacks AVX2")
def test_q8_kernel_takes_denormal_activations_as_zero_blocks():
    """A block whose largest activation over 127 underflows to 0 gets the all-zero step (1), not a
    division by zero (which would stop one thread of the decode step and leave the others waiting)."""
    weight = Quant.from_dense(torch.randn(16, 64), bits=4, group_size=32)
    x = torch.full((1, 64), 1e-44)
    assert fits_q8(weight, 1)
    xq, d, _ = q8_activations(x)
    assert d.tolist() == [[1.0, 1.0]] and not xq.any()
    y = quant_linear(x, weight)
    assert bool(y.isfinite().all()) and float(y.abs().max()) < 1e-38
