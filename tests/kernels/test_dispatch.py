"""Tests for sparsa.kernels: dispatch table, fallback to the reference, and reference correctness."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sparsa.formats import NM, Bitmap, BlockSparse, Quant
from sparsa.formats.base import Format
from sparsa.formats.bitpack import pack_bits
from sparsa.kernels import linear, linear_reference, register_linear_kernel, select_linear_kernel
from sparsa.kernels.dispatch import LINEAR_KERNELS

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(6, 8, generator=g)
    W.view(6, 2, 4)[..., 1::2] = 0  # 2:4-compatible and half sparse
    return W


FORMATS = {
    "bitmap": lambda W: Bitmap.from_dense(W),
    "nm": lambda W: NM.from_dense(W, n=2, m=4),
    "block": lambda W: BlockSparse.from_dense(W, block=(2, 2)),
    "quant": lambda W: Quant.from_dense(W, bits=4, group_size=4),
    "bitmap-bf16": lambda W: Bitmap.from_dense(W.bfloat16()),
    "nm-fp16": lambda W: NM.from_dense(W.half(), n=2, m=4),
}


def rounding_bound(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """How far two correct evaluations of ``y = x Wᵀ + b`` in ``dtype`` may lie apart, per output.

    Each evaluation sums ``n = in`` products and the bias, ``n + 1`` terms, in some order, every
    operation rounded to nearest with unit roundoff ``u = eps(dtype) / 2`` (accumulating in fp32
    and rounding once to fp16/bf16 at the end stays inside this too). Whatever the order (Higham,
    Accuracy and Stability of Numerical Algorithms, §3.1, inner products),
    ``|fl(y_i) - y_i| <= γ_{n+1} (Σ_j |x_j w_ij| + |b_i|)`` with ``γ_m = m u / (1 - m u)``; a kernel
    and ``F.linear`` on the decoded weight each lie within that of the exact ``y``, so within twice
    that of each other.

    Args:
        x: [..., in]; W: [out, in], the decoded weight; bias: [out] or None; dtype: the activations'.
    Returns:
        [..., out] float64.
    """
    u = torch.finfo(dtype).eps / 2
    m = x.shape[-1] + 1
    magnitude = x.double().abs() @ W.double().abs().T + (0 if bias is None else bias.double().abs())
    return 2 * m * u / (1 - m * u) * magnitude


def within(y: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> bool:
    """Whether every output of ``y`` lies within ``bound`` of ``expected`` (same shapes)."""
    return bool(((y.double() - expected.double()).abs() <= bound).all())


def altered(fmt: Format, k: int) -> Format:
    """``fmt`` with one stored weight changed: value ``k`` negated, or (Quant) code ``k`` one step off."""
    if isinstance(fmt, Quant):
        codes = fmt.unpacked_codes().flatten().clone()
        codes[k] ^= 1
        return replace(fmt, codes=pack_bits(codes, fmt.bits))
    values = fmt.values.clone()
    values.view(-1)[k] *= -1
    return replace(fmt, values=values)


def stored_weights(fmt: Format) -> list[int]:
    """Indices for :func:`altered` that change W: every code (Quant), else every nonzero value."""
    if isinstance(fmt, Quant):
        return list(range(fmt.numel))
    return fmt.values.flatten().nonzero().flatten().tolist()


def quant_error_bound(fmt: Quant) -> torch.Tensor:
    """Per weight, how far min-max round-to-nearest may put ``fmt.to_dense()`` from the W it was
    made from: [out, in] float64.

    With step ``s`` and minimum ``m`` as stored, rounding a code leaves ``s / 2``. ``s`` and ``m``
    are fp16 (unit roundoff ``u16``), so the grid's top ``m + Q s`` (``Q = 2**bits - 1``) may fall
    short of the group's largest weight by ``u16 (Q s + |m|)`` and a weight there, its code clamped
    to ``Q``, misses by that much more; the fp32 arithmetic forming codes and weights adds a few
    ``u32`` of the same magnitudes (eight here, generously).
    """
    in_features = fmt.shape[1]
    s = fmt.scale.double().repeat_interleave(fmt.group_size, 1)[:, :in_features]
    m = fmt.minimum.double().repeat_interleave(fmt.group_size, 1)[:, :in_features]
    u16, u32 = torch.finfo(torch.float16).eps / 2, torch.finfo(torch.float32).eps / 2
    return s / 2 + (u16 + 8 * u32) * ((2**fmt.bits - 1) * s + m.abs())


@pytest.fixture
def restore_kernels():
    """Snapshot LINEAR_KERNELS and restore it, so registrations made by a test do not leak."""
    saved = dict(LINEAR_KERNELS)
    try:
        yield LINEAR_KERNELS
    finally:
        LINEAR_KERNELS.clear()
        LINEAR_KERNELS.update(saved)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_shape", [(3, 8), (2, 5, 8), (1, 8)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_each_format_matches_f_linear_on_decoded_weight(name, dtype, x_shape, with_bias):
    fmt = FORMATS[name](weight())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*x_shape, generator=g).to(dtype)
    bias = torch.randn(6, generator=g).to(dtype) if with_bias else None
    y, expected = linear(x, fmt, bias), F.linear(x, fmt.to_dense(dtype), bias)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], 6)
    assert torch.equal(linear_reference(x, fmt, bias), expected)
    if select_linear_kernel(fmt, x) is linear_reference:
        assert torch.equal(y, expected)
    else:  # a fast kernel: same product up to its summation order
        assert within(y, expected, rounding_bound(x, fmt.to_dense(dtype), bias, dtype))


@pytest.mark.parametrize("name", FORMATS)
def test_linear_one_altered_stored_weight_breaks_the_rounding_bound(name):
    """The bound above catches a kernel that reads one weight wrong: every nonzero stored value
    negated, or every code moved one step, puts some fp32 output outside it (fp32: the CPU kernels)."""
    fmt = FORMATS[name](weight())
    g = torch.Generator().manual_seed(1)
    x, bias = torch.randn(3, 8, generator=g), torch.randn(6, generator=g)
    W = fmt.to_dense(torch.float32)
    expected, bound = F.linear(x, W, bias), rounding_bound(x, W, bias, torch.float32)
    assert within(linear(x, fmt, bias), expected, bound)
    positions = stored_weights(fmt)
    assert len(positions) >= 24  # the 24 nonzero weights of weight(); Quant: all 48 codes
    assert [k for k in positions if within(linear(x, altered(fmt, k), bias), expected, bound)] == []


def test_select_linear_kernel_activations_needing_grad_take_the_reference():
    fmt = FORMATS["block"](weight())
    x = torch.randn(2, 8, requires_grad=True)
    assert select_linear_kernel(fmt, x) is linear_reference
    with torch.no_grad():
        assert select_linear_kernel(fmt, x) is not linear_reference


def test_select_linear_kernel_declined_weight_takes_the_reference():
    fmt = BlockSparse.from_dense(weight().bfloat16(), block=(2, 2))
    assert ("block", "cpu", torch.float32) in LINEAR_KERNELS
    assert select_linear_kernel(fmt, torch.zeros(1, 8)) is linear_reference


@pytest.mark.parametrize("name", ["bitmap", "nm", "block"])
def test_linear_reference_lossless_formats_match_dense_weight(name):
    W = weight(2)
    x = torch.randn(4, 8)
    assert torch.equal(linear_reference(x, FORMATS[name](W)), F.linear(x, W))


def quant_reference_error(fmt: Quant, W: torch.Tensor, x: torch.Tensor) -> tuple[bool, bool]:
    """(every weight of ``fmt`` within :func:`quant_error_bound` of ``W``, every output of
    ``linear_reference(x, fmt)`` within ``Σ_j |x_j| e_ij`` of ``x Wᵀ``, plus both products' rounding)."""
    e = quant_error_bound(fmt)
    decoded = fmt.to_dense()
    weights_ok = bool(((decoded.double() - W.double()).abs() <= e).all())
    bound = (x.double().abs() @ e.T + (rounding_bound(x, decoded, None, torch.float32)
                                       + rounding_bound(x, W, None, torch.float32)) / 2)
    return weights_ok, within(linear_reference(x, fmt), F.linear(x, W), bound)


def test_linear_reference_quant_within_quantization_error_of_dense_weight():
    W = weight(3)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    assert quant_reference_error(FORMATS["quant"](W), W, x) == (True, True)


def test_quant_error_bound_each_flipped_dense_weight_breaks_it():
    """A sign flip of any nonzero weight of W moves it ``2 |w|``, more than twice its bound ``e``,
    so the quantized weight, within ``e`` of the original, is more than ``e`` from the flipped one."""
    W = weight(3)
    fmt = FORMATS["quant"](W)
    positions = W.flatten().nonzero().flatten().tolist()
    e = quant_error_bound(fmt).flatten()
    assert len(positions) == 24 and bool((W.flatten()[positions].abs() > e[positions]).all())
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    for k in positions:
        flipped = W.clone()
        flipped.view(-1)[k] *= -1
        assert not quant_reference_error(fmt, flipped, x)[0], k


@pytest.mark.parametrize("name", FORMATS)
def test_select_linear_kernel_unregistered_key_falls_back_to_reference(name):
    fmt = FORMATS[name](weight())
    x = torch.randn(2, 8, dtype=torch.float64)
    assert (fmt.format_name, "cpu", torch.float64) not in LINEAR_KERNELS
    assert select_linear_kernel(fmt, x) is linear_reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_select_linear_kernel_cpu_formats_without_kernel_fall_back_to_reference(dtype):
    for build in FORMATS.values():
        fmt = build(weight())
        if (fmt.format_name, "cpu", dtype) not in LINEAR_KERNELS:
            assert select_linear_kernel(fmt, torch.zeros(1, 8, dtype=dtype)) is linear_reference


def test_register_linear_kernel_fresh_key_routes_linear_to_it(restore_kernels):
    calls = []

    def dummy(x, weight, bias=None):
        calls.append((x.dtype, weight.format_name, bias))
        return torch.full((*x.shape[:-1], weight.shape[0]), 7.0, dtype=x.dtype)

    key = ("bitmap", "cpu", torch.float64)
    assert key not in restore_kernels
    returned = register_linear_kernel("bitmap", "cpu", (torch.float64,))(dummy)
    assert returned is dummy and restore_kernels[key].kernel is dummy
    fmt = FORMATS["bitmap"](weight())
    x64 = torch.randn(3, 8, dtype=torch.float64)
    assert select_linear_kernel(fmt, x64) is dummy
    y = linear(x64, fmt)
    assert torch.equal(y, torch.full((3, 6), 7.0, dtype=torch.float64))
    assert calls == [(torch.float64, "bitmap", None)]
    # other dtypes and formats still run the reference
    x32 = torch.randn(3, 8)
    filed = LINEAR_KERNELS.get(("bitmap", "cpu", torch.float32))
    assert select_linear_kernel(fmt, x32) is (filed.kernel if filed else linear_reference)
    assert select_linear_kernel(FORMATS["nm"](weight()), x64) is linear_reference


def test_register_linear_kernel_several_dtypes_files_each(restore_kernels):
    def dummy(x, weight, bias=None):
        return x

    register_linear_kernel("nm", "fakedevice", (torch.float16, torch.bfloat16))(dummy)
    assert restore_kernels[("nm", "fakedevice", torch.float16)].kernel is dummy
    assert restore_kernels[("nm", "fakedevice", torch.bfloat16)].kernel is dummy
    assert ("nm", "fakedevice", torch.float32) not in restore_kernels


def test_restore_kernels_fixture_leaves_no_fake_registrations():
    assert ("bitmap", "cpu", torch.float64) not in LINEAR_KERNELS
    assert not any(key[1] == "fakedevice" for key in LINEAR_KERNELS)
