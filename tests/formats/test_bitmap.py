"""Tests for sparsa.formats.bitmap: unstructured sparsity as a 1-bit mask plus kept values."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.bitmap import Bitmap
from sparsa.formats.bitpack import pack_bits

FAST = settings(max_examples=50, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def sparse_weight(draw):
    """[out, in] weight of a value dtype with random density, possibly empty rows or all zeros."""
    out = draw(st.integers(1, 6))
    inp = draw(st.integers(1, 21))
    dtype = draw(st.sampled_from(DTYPES))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g) * (torch.rand(out, inp, generator=g) < density)
    if draw(st.booleans()):
        W[torch.rand(out, generator=g) < 0.5] = 0  # empty rows
    return W.to(dtype)


@FAST
@given(sparse_weight())
def test_bitmap_from_dense_any_weight_roundtrips_exactly(W):
    fmt = Bitmap.from_dense(W)
    dense = fmt.to_dense()
    assert dense.dtype == W.dtype and dense.shape == W.shape
    assert torch.equal(dense, W)
    assert fmt.values.dtype == W.dtype
    assert torch.equal(fmt.kept().view(W.shape), W != 0)
    assert torch.equal(fmt.values, W[W != 0])


@FAST
@given(sparse_weight(), st.booleans())
def test_bitmap_state_dict_roundtrip_is_bit_exact(W, via_json):
    fmt = Bitmap.from_dense(W)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = Bitmap.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    assert back.meta() == fmt.meta() == {"shape": list(W.shape)}
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.to_dense(), W)


@FAST
@given(sparse_weight())
def test_bitmap_nbytes_any_weight_is_mask_bytes_plus_values(W):
    fmt = Bitmap.from_dense(W)
    nnz = int((W != 0).sum())
    assert fmt.nbytes == math.ceil(W.numel() / 8) + nnz * W.element_size()
    assert fmt.mask.shape == (math.ceil(W.numel() / 8),)


@FAST
@given(sparse_weight(), st.sampled_from(DTYPES))
def test_bitmap_to_dense_requested_dtype_casts(W, dtype):
    assert torch.equal(Bitmap.from_dense(W).to_dense(dtype), W.to(dtype))


def test_bitmap_one_row_odd_width_roundtrips_exactly():
    W = torch.tensor([[0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0]])
    fmt = Bitmap.from_dense(W)
    assert fmt.mask.tolist() == [0b00001010, 0b00000001]
    assert fmt.values.tolist() == [1.5, -2.0, 3.0]
    assert fmt.nbytes == 2 + 3 * 4
    assert torch.equal(fmt.to_dense(), W)


def test_bitmap_all_zero_weight_stores_no_values():
    fmt = Bitmap.from_dense(torch.zeros(3, 5, dtype=torch.bfloat16))
    assert fmt.values.numel() == 0 and fmt.values.dtype == torch.bfloat16
    assert fmt.nbytes == 2
    assert torch.equal(fmt.to_dense(), torch.zeros(3, 5, dtype=torch.bfloat16))


def test_bitmap_half_sparse_fp16_is_9_bits_per_param():
    W = torch.ones(4, 16, dtype=torch.float16)
    W[:, ::2] = 0
    fmt = Bitmap.from_dense(W)
    assert 8 * fmt.nbytes / fmt.numel == 1 + 0.5 * 16


def test_bitmap_from_dense_noncontiguous_weight_matches_contiguous():
    W = torch.randn(5, 3) * (torch.rand(5, 3) > 0.5)
    a, b = Bitmap.from_dense(W.t()), Bitmap.from_dense(W.t().contiguous())
    assert torch.equal(a.mask, b.mask) and torch.equal(a.values, b.values)
    assert torch.equal(a.to_dense(), W.t())


# -- validation -----------------------------------------------------------------------------

def good_bitmap():
    W = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    return Bitmap.from_dense(W)  # 9 weights -> 2 mask bytes, 4 values


def load(arrays, meta=None):
    return Bitmap.from_state_dict(arrays, meta if meta is not None else good_bitmap().meta(), where="f:w")


def test_bitmap_from_state_dict_popcount_mismatch_raises():
    arrays = good_bitmap().to_state_dict()
    arrays["values"] = arrays["values"][:3]
    with pytest.raises(SparsaError, match=re.escape("f:w: mask marks 4 weights but values holds 3")):
        load(arrays)


def test_bitmap_from_state_dict_extra_mask_bit_raises():
    arrays = good_bitmap().to_state_dict()
    arrays["mask"] = arrays["mask"].clone()
    arrays["mask"][0] |= 1
    with pytest.raises(SparsaError, match=re.escape("f:w: mask marks 5 weights but values holds 4")):
        load(arrays)


def test_bitmap_from_state_dict_mask_wrong_dtype_raises():
    arrays = good_bitmap().to_state_dict()
    arrays["mask"] = arrays["mask"].to(torch.int8)
    with pytest.raises(SparsaError, match=re.escape("f:w: mask has dtype torch.int8, expected one of [torch.uint8]")):
        load(arrays)


@pytest.mark.parametrize("length", [1, 3])
def test_bitmap_from_state_dict_mask_wrong_length_raises(length):
    arrays = good_bitmap().to_state_dict()
    arrays["mask"] = torch.zeros(length, dtype=torch.uint8)
    with pytest.raises(SparsaError, match=re.escape(f"f:w: mask has shape [{length}], expected [2]")):
        load(arrays)


@pytest.mark.parametrize("values", [torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.float64),
                                    torch.ones(2, 2)])
def test_bitmap_from_state_dict_values_not_1d_float_raises(values):
    arrays = {**good_bitmap().to_state_dict(), "values": values}
    with pytest.raises(SparsaError, match=re.escape("f:w: values must be 1-D float, got")):
        load(arrays)


def test_bitmap_from_state_dict_missing_array_raises():
    with pytest.raises(SparsaError, match=re.escape("f:w: missing arrays ['mask']")):
        load({"values": good_bitmap().values})


def test_bitmap_from_state_dict_extra_array_raises():
    arrays = {**good_bitmap().to_state_dict(), "index": torch.zeros(1, dtype=torch.uint8)}
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['index']")):
        load(arrays)


def test_bitmap_from_state_dict_wrong_meta_keys_raises():
    meta = {"shape": [3, 3], "n": 2}
    with pytest.raises(SparsaError, match=re.escape("f:w: bitmap metadata has keys ['n', 'shape'], expected ['shape']")):
        load(good_bitmap().to_state_dict(), meta)


def test_bitmap_from_state_dict_wrong_shape_meta_raises():
    # a 2x4 weight needs ceil(8 / 8) = 1 mask byte, the stored mask has 2
    with pytest.raises(SparsaError, match=re.escape("f:w: mask has shape [2], expected [1]")):
        load(good_bitmap().to_state_dict(), {"shape": [2, 4]})


@pytest.mark.parametrize("shape", [[0, 9], [9], [3, -3]])
def test_bitmap_from_state_dict_nonpositive_shape_raises(shape):
    with pytest.raises(SparsaError, match=r"f:w: shape .* is not two positive integers"):
        load(good_bitmap().to_state_dict(), {"shape": shape})


def test_bitmap_mask_packs_row_major_presence():
    fmt = good_bitmap()
    assert torch.equal(fmt.mask, pack_bits(torch.tensor([0, 1, 1, 1, 0, 0, 0, 0, 1]), 1))
