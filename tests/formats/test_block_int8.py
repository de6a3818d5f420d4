"""Tests for sparsa.formats.block_int8: per-row int8 codes in BSR blocks."""

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import BlockSparseInt8, get_format
from sparsa.formats.block_int8 import int8_row_codes

FAST = settings(max_examples=50, deadline=None)


@st.composite
def int8_case(draw):
    block = draw(st.sampled_from([(4, 1), (1, 4), (1, 16), (2, 2), (1, 1)]))
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    density = draw(st.sampled_from([0.0, 0.3, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    (R, C), (r, c) = grid, block
    keep = torch.rand(R, 1, C, 1, generator=g) < density
    W = (torch.randn(R, r, C, c, generator=g) * keep).reshape(R * r, C * c)
    return W, block


@FAST
@given(int8_case())
def test_block_int8_from_dense_any_weight_within_half_a_step(case):
    W, block = case
    fmt = BlockSparseInt8.from_dense(W, block=block)
    dense = fmt.to_dense()
    assert dense.dtype == torch.float32 and fmt.values.dtype == torch.int8
    assert bool(((dense - W).abs() <= fmt.scale[:, None] / 2 + 1e-7).all())
    assert torch.equal(dense[W == 0], torch.zeros(int((W == 0).sum())))


@FAST
@given(int8_case(), st.booleans())
def test_block_int8_state_dict_roundtrip_is_bit_exact(case, via_json):
    W, block = case
    fmt = BlockSparseInt8.from_dense(W, block=block)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = BlockSparseInt8.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    for name, array in fmt.arrays().items():
        assert back.arrays()[name].dtype == array.dtype and torch.equal(back.arrays()[name], array)
    assert torch.equal(back.to_dense(), fmt.to_dense())


def test_block_int8_known_weight_gives_known_codes_scales_and_bytes():
    W = torch.tensor([[0.0, 2.54, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, -0.5], [0.0, 0.0, 0.0, 0.0]])
    fmt = BlockSparseInt8.from_dense(W, block=(2, 1))
    assert fmt.scale.tolist() == pytest.approx([0.02, 0.0, 1 / 127, 0.0])
    assert fmt.crow.tolist() == [0, 1, 3] and fmt.col.tolist() == [1, 0, 3]
    assert fmt.values[:, :, 0].tolist() == [[127, 0], [127, 0], [-64, 0]]  # -0.5 * 127 = -63.5 rounds to even
    assert fmt.nbytes == 4 * 3 + 2 * 3 + 1 * 6 + 4 * 4
    assert get_format("block_int8") is BlockSparseInt8


def test_int8_row_codes_all_zero_row_has_zero_scale_and_codes():
    codes, scale = int8_row_codes(torch.zeros(2, 5))
    assert scale.tolist() == [0.0, 0.0] and not codes.any()


def state():
    return BlockSparseInt8.from_dense(torch.randn(4, 4), block=(2, 1))


@pytest.mark.parametrize("name, value, message", [
    ("values", lambda v: v.float(), "values has dtype torch.float32, expected one of [torch.int8]"),
    ("values", lambda v: torch.full_like(v, -128), "values hold -128 (codes are in [-127, 127])"),
    ("scale", lambda s: s.double(), "scale has dtype torch.float64, expected one of [torch.float32]"),
    ("scale", lambda s: s[:3], "scale has shape [3], expected [4]"),
    ("scale", lambda s: -s, "scale holds inf/nan or a negative step"),
])
def test_block_int8_from_state_dict_bad_array_raises(name, value, message):
    fmt = state()
    arrays = fmt.to_state_dict()
    arrays[name] = value(arrays[name])
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {message}")):
        BlockSparseInt8.from_state_dict(arrays, fmt.meta(), where="f:w")
