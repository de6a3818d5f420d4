"""The numba SpQR kernel against the reference (decode the weight, F.linear)."""

from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.compress import SpQRConfig
from sparsa.compress.hessian import HessianAccumulator
from sparsa.compress.spqr import spqr_solve
from sparsa.formats import SpQR
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu.spqr import fits_vnni, fp32_path, spqr_linear, takes_q8, takes_vnni
from sparsa.kernels.cpu import spqr_q8
from sparsa.kernels.cpu.spqr_q8 import q8_activations, q8_reference
from sparsa.kernels.cpu.tiles import X_LEVELS
from sparsa.kernels.cpu.vnni import HAS_VNNI

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4)}


def assert_fp32_close(y: torch.Tensor, x: torch.Tensor, fmt, bias=None) -> None:
    """|y - exact| within fp32 rounding of the sum, 1e-5 * sum_k |w_k x_k| (sums of large outliers
    cancel), plus, on the VNNI paths, the activation rounding they add, each activation meeting
    every dequantized code weight of its column, the code under an outlier (reset near the
    zero-point) included:

    * at decode (:func:`takes_q8`), int8 per group: ``d / 2`` per activation, ``d`` the group's
      largest magnitude / 127 (plus 1e-5 d for the fp32 scaling before the rounding);
    * beyond, 22 bits per token: ``max_k |x_k| / X_LEVELS`` per activation.
    """
    W = fmt.to_dense().double()
    exact = x.double() @ W.T + (0 if bias is None else bias.double())
    bound = 1e-5 * (x.double().abs() @ W.abs().T) + 1e-6
    if takes_vnni(fmt):
        s, z = fmt.first_level_stats()
        q, _, _ = fmt.outlier_free_codes()  # permuted column order
        g = fmt.group_size
        deq = (s.double()[..., None] * (q.view(fmt.shape[0], fmt.groups, g).double() - z.double()[..., None]))
        deq = deq.view(fmt.shape).abs()
        if takes_q8(fmt, x.shape[0]):
            _, d, _ = q8_activations(x[:, fmt.permutation()], g)
            bound = bound + (d.double().repeat_interleave(g, 1) * (0.5 + 1e-5)) @ deq.T
        else:
            bound = bound + (x.double().abs().amax(dim=1, keepdim=True) / X_LEVELS) * deq.sum(1)
    assert bool(((y.double() - exact).abs() <= bound).all()), float(((y.double() - exact).abs() / bound).max())


TOKEN_COUNTS = [0, 1, 9, 16, 17, 32, 33, 40]  # the README's 0 to 40 tokens: its ends, either side of 16 and 32


def random_spqr(bits: int, b1: int, stat_bits: int, b2: int, out: int, inp: int, outliers: float, tokens: int,
                with_bias: bool, seed: int):
    """(SpQR W [out, inp] of random parts, activations [tokens, inp], bias [out] or None): codes of
    ``bits`` in groups of ``b1`` columns, stat codes of ``stat_bits`` over runs of ``b2`` rows, an
    ``outliers`` fraction of weights stored as outliers, a random permutation."""
    g = torch.Generator().manual_seed(seed)
    groups = inp // b1

    def stats():
        return torch.stack([torch.rand(out // b2, groups, generator=g) * 0.1,
                            torch.randn(out // b2, groups, generator=g)], -1).half()

    fmt = SpQR.from_parts(
        codes=torch.randint(0, 2**bits, (out, inp), generator=g), perm=torch.randperm(inp, generator=g),
        scale_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g),
        zero_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g), scale_stats=stats(), zero_stats=stats(),
        outlier_mask=torch.rand(out, inp, generator=g) < outliers,
        outlier_values_dense=torch.randn(out, inp, generator=g) * 10, bits=bits, group_size=b1, stat_bits=stat_bits,
        stat_group_size=b2)
    x = torch.randn(tokens, inp, generator=g)
    bias = torch.randn(out, generator=g) if with_bias else None
    return fmt, x, bias


@st.composite
def spqr_case(draw):
    """Random SpQR parts: code widths and group sizes (byte-aligned rows or not; each combination is
    one compiled kernel, so a handful), outliers, permutation; 0..40 tokens."""
    bits, b1, stat_bits = draw(st.sampled_from([(3, 16, 3), (4, 16, 3), (2, 3, 2), (8, 8, 8), (3, 4, 5)]))
    b2 = draw(st.sampled_from([1, 2, 4, 16, 32]))  # 16, 32: the tile shares one stat pair
    out, inp = b2 * draw(st.integers(1, 64 // b2)), b1 * draw(st.integers(1, 5))
    return random_spqr(bits, b1, stat_bits, b2, out, inp, draw(st.sampled_from([0.0, 0.05, 0.5])),
                       draw(st.integers(0, 40)), draw(st.booleans()), draw(st.integers(0, 2**16)))


def check_spqr_linear(fmt, x: torch.Tensor, bias: torch.Tensor | None, fp32: bool) -> None:
    """``spqr_linear`` (forced onto the fp32 path where ``fp32``) within :func:`assert_fp32_close`."""
    with fp32_path() if fp32 else nullcontext():
        y = spqr_linear(x, fmt, bias)
        assert y.shape == (x.shape[0], fmt.shape[0]) and y.dtype == torch.float32
        assert_fp32_close(y, x, fmt, bias)


@settings(max_examples=60, deadline=None)
@given(spqr_case(), st.booleans())
def test_spqr_linear_random_formats_match_reference(case, fp32):  # VNNI (3/4-bit, β1 16, β2 16/32), fp32 tiles
    check_spqr_linear(*case, fp32)


@pytest.mark.parametrize("fp32", [False, True], ids=["vnni-where-fits", "fp32-forced"])
@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_spqr_linear_each_token_count_matches_reference(tokens, fp32):
    fmt, x, bias = random_spqr(3, 16, 3, 16, 48, 96, 0.05, tokens, True, seed=tokens)
    assert fits_vnni(fmt) == HAS_VNNI  # 3-bit codes, groups of 16, an even group count: the 3-bit VNNI layout
    check_spqr_linear(fmt, x, bias, fp32)


@pytest.mark.parametrize("bits", [3, 4])
def test_spqr_linear_solver_output_matches_reference_and_dispatches(bits):
    torch.manual_seed(0)
    W, X = torch.randn(64, 96), torch.randn(300, 96)
    acc = HessianAccumulator(96)
    acc.add(X)
    fmt, _, _ = spqr_solve(W, acc.H, SpQRConfig(bits=bits, outlier_threshold=0.05), where="t")
    assert fmt.outlier_values.numel() > 0
    x = torch.randn(2, 5, 96)
    assert select_linear_kernel(fmt, x) is spqr_linear
    torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), **TOL[torch.float32])


@pytest.mark.skipif(not HAS_VNNI, reason="this CPU lacks AVX-512 VNNI: SpQR takes the fp32 path at every token count")
@pytest.mark.parametrize("bits, b1", [(3, 16), (4, 16), (3, 8), (4, 32)], ids=["3bit-layout", "nibbles-16", "nibbles-8",
                                                                             "nibbles-32"])
@pytest.mark.parametrize("tokens", [1, 3, 4, 5, 8])
def test_int8_activation_kernel_matches_its_torch_reference(bits, b1, tokens):
    """At decode the VNNI path rounds activations to int8 per group: the kernel does the arithmetic of
    :func:`q8_reference` (exact integer dots), so only fp32 summation order separates them; one
    token past ``spqr_q8.TOKENS`` takes the 22-bit kernel instead."""
    fmt, x, _ = random_spqr(bits, b1, 3, 16, 48, 128, 0.05, tokens, False, seed=tokens)
    assert takes_q8(fmt, tokens) and not takes_q8(fmt, spqr_q8.TOKENS + 1)
    expected = q8_reference(x, fmt)
    torch.testing.assert_close(spqr_linear(x, fmt), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    bad = x.clone()
    bad[0, 5] = float("inf")
    assert bool(spqr_linear(bad, fmt)[0].isnan().all()) and bool(spqr_linear(bad, fmt)[1:].isfinite().all())
    tiny = torch.full_like(x, 1e-44)  # largest / 127 underflows: the all-zero group's step, not a division by 0
    assert bool((q8_activations(tiny, fmt.group_size)[1] == 1).all())
    assert bool(spqr_linear(tiny, fmt).isfinite().all())
