"""Tests for sparsa.kernels: dispatch table, fallback to the reference, and reference correctness."""

import pytest
import torch
import torch.nn.functional as F

from sparsa.formats import NM, Bitmap, BlockSparse, Quant
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
        torch.testing.assert_close(y, expected)


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


def test_linear_reference_quant_close_to_dense_weight():
    W = weight(3)
    x = torch.randn(4, 8)
    fmt = FORMATS["quant"](W)
    assert torch.allclose(linear_reference(x, fmt), F.linear(x, W), atol=float(fmt.scale.max()) * 8)


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
