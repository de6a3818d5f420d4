"""The VNNI int8 4x1 kernel against its integer twin and the fp32 reference; the IR intrinsics."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import BlockSparseInt8
from sparsa.kernels import linear_reference, select_linear_kernel
from sparsa.kernels.cpu.block_int8 import block_int8_linear
from sparsa.kernels.reference import int8_linear_reference, quantize_tokens
from sparsa.kernels.cpu.vnni import HAS_VNNI, dpbusd16, interleave4

pytestmark = pytest.mark.skipif(not HAS_VNNI, reason="this CPU lacks AVX-512 VNNI")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5)}


@numba.njit
def _interleave(dst, src, i0, i1, i2, i3):
    interleave4(dst, 0, src, i0, i1, i2, i3)


@numba.njit
def _dpbusd(acc, x, w):
    dpbusd16(acc, 0, x, 0, w)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 48), min_size=4, max_size=4), st.integers(0, 2**16))
def test_interleave4_any_rows_lays_bytes_as_4_byte_lanes(starts, seed):
    src = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8)
    dst = np.zeros(64, np.uint8)
    _interleave(dst, src, *starts)
    expected = np.stack([src[s:s + 16] for s in starts], axis=1).reshape(-1)  # dst[4n + t] = src[s_t + n]
    assert np.array_equal(dst, expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16))
def test_dpbusd16_random_bytes_add_uint8_by_int8_dot_products(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, 64, dtype=np.uint8)
    w = rng.integers(-128, 128, 4, dtype=np.int8)
    acc = rng.integers(-2**20, 2**20, 16, dtype=np.int32)
    expected = acc + x.reshape(16, 4).astype(np.int32) @ w.astype(np.int32)
    _dpbusd(acc, x, np.int32(w.view(np.int32)[0]))
    assert np.array_equal(acc, expected)


@st.composite
def int8_case(draw):
    block_rows, in_features = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    keep = torch.rand(block_rows, in_features, generator=g) < density
    W = torch.randn(4 * block_rows, in_features, generator=g) * keep.repeat_interleave(4, 0)
    x = torch.randn(draw(st.integers(0, 40)), in_features, generator=g) * draw(st.sampled_from([1.0, 1e-3, 0.0]))
    bias = torch.randn(4 * block_rows, generator=g) if draw(st.booleans()) else None
    return BlockSparseInt8.from_dense(W, block=(4, 1)), x, bias


@settings(max_examples=60, deadline=None)
@given(int8_case())
def test_block_int8_linear_random_weights_equal_integer_twin(case):
    fmt, x, bias = case
    y = block_int8_linear(x, fmt, bias)
    assert y.shape == (x.shape[0], fmt.shape[0]) and y.dtype == torch.float32
    torch.testing.assert_close(y, int8_linear_reference(x, fmt, bias), **TOL[torch.float32])


def test_block_int8_linear_bert_shape_within_two_percent_of_fp32():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(768 // 4, 768, generator=g) < 0.2
    W = torch.randn(768, 768, generator=g) * keep.repeat_interleave(4, 0)
    fmt = BlockSparseInt8.from_dense(W, block=(4, 1))
    x = torch.randn(2, 37, 768, generator=g)
    y, expected = block_int8_linear(x, fmt), x @ W.T
    assert y.shape == (2, 37, 768)
    assert float((y - expected).norm() / expected.norm()) < 2e-2
    torch.testing.assert_close(y, int8_linear_reference(x, fmt), **TOL[torch.float32])


def test_quantize_tokens_codes_offset_by_128_and_zero_rows_get_unit_scale():
    x = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0]])
    codes, scale = quantize_tokens(x)
    assert codes.tolist() == [[255, 64, 128], [128, 128, 128]]  # -63.5 rounds to even
    assert scale.tolist() == pytest.approx([0.01, 1.0])


def test_select_linear_kernel_block_int8_only_4x1_runs_vnni():
    W = torch.randn(8, 8)
    assert select_linear_kernel(BlockSparseInt8.from_dense(W, block=(4, 1)), torch.zeros(1, 8)) is block_int8_linear
    other = BlockSparseInt8.from_dense(W, block=(2, 1))
    assert select_linear_kernel(other, torch.zeros(1, 8)) is linear_reference
    with pytest.raises(SparsaError, match="the int8 VNNI kernel takes 4x1 blocks, got 2x1"):
        block_int8_linear(torch.zeros(1, 8), other)


def test_block_int8_linear_wrong_dtype_raises():
    fmt = BlockSparseInt8.from_dense(torch.randn(8, 8), block=(4, 1))
    with pytest.raises(SparsaError, match="takes torch.float32 activations, got torch.bfloat16"):
        block_int8_linear(torch.zeros(1, 8, dtype=torch.bfloat16), fmt)
