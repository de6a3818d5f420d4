"""Tests for sparsa.formats.block_sparse: BSR storage of R x C blocks holding a nonzero."""

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse, check_block, column_dtype

FAST = settings(max_examples=50, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def block_weight(seed: int, grid: tuple[int, int], block: tuple[int, int], density: float, dtype):
    """[R*r, C*c] weight whose blocks are kept with probability ``density`` (kept blocks may hold zeros)."""
    (R, C), (r, c) = grid, block
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(R, 1, C, 1, generator=g) < density
    inner = torch.rand(R, r, C, c, generator=g) < 0.7  # some zeros inside kept blocks too
    W = torch.randn(R, r, C, c, generator=g) * keep * inner
    return W.reshape(R * r, C * c).to(dtype)


def nonzero_blocks(W: torch.Tensor, block) -> int:
    r, c = block
    R, C = W.shape[0] // r, W.shape[1] // c
    return int(W.reshape(R, r, C, c).ne(0).any(dim=3).any(dim=1).sum())


@st.composite
def block_case(draw):
    block = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return block_weight(seed, grid, block, density, dtype), block


@FAST
@given(block_case())
def test_block_sparse_from_dense_any_weight_roundtrips_exactly(case):
    W, block = case
    fmt = BlockSparse.from_dense(W, block=block)
    dense = fmt.to_dense()
    assert dense.dtype == W.dtype and torch.equal(dense, W)
    assert fmt.values.dtype == W.dtype
    assert fmt.col.numel() == nonzero_blocks(W, block)


@FAST
@given(block_case())
def test_block_sparse_indices_any_weight_are_valid_csr(case):
    W, block = case
    fmt = BlockSparse.from_dense(W, block=block)
    R, C = fmt.grid
    assert fmt.crow.dtype == torch.int32 and fmt.crow.shape == (R + 1,)
    assert fmt.col.dtype == torch.int16
    assert int(fmt.crow[0]) == 0 and int(fmt.crow[-1]) == fmt.col.numel()
    tiles = W.reshape(R, block[0], C, block[1]).ne(0).any(dim=3).any(dim=1)  # [R, C]
    for i in range(R):
        cols = fmt.col[int(fmt.crow[i]):int(fmt.crow[i + 1])].tolist()
        assert cols == tiles[i].nonzero().flatten().tolist()


@FAST
@given(block_case(), st.booleans())
def test_block_sparse_state_dict_roundtrip_is_bit_exact(case, via_json):
    W, block = case
    fmt = BlockSparse.from_dense(W, block=block)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = BlockSparse.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    assert back.meta() == fmt.meta() == {"shape": list(W.shape), "block": list(block)}
    assert back.block == tuple(block)
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.to_dense(), W)


@FAST
@given(block_case())
def test_block_sparse_nbytes_any_weight_matches_bsr_formula(case):
    W, (r, c) = case
    fmt = BlockSparse.from_dense(W, block=(r, c))
    R = W.shape[0] // r
    nnzb = nonzero_blocks(W, (r, c))
    assert fmt.nbytes == 4 * (R + 1) + 2 * nnzb + nnzb * r * c * W.element_size()


@FAST
@given(block_case(), st.sampled_from(DTYPES))
def test_block_sparse_to_dense_requested_dtype_casts(case, dtype):
    W, block = case
    assert torch.equal(BlockSparse.from_dense(W, block=block).to_dense(dtype), W.to(dtype))


def test_block_sparse_known_weight_stores_known_blocks():
    W = torch.zeros(4, 6)
    W[0, 2] = 1.0   # block (0, 1)
    W[3, 5] = 2.0   # block (1, 2)
    W[2, 0] = 3.0   # block (1, 0)
    fmt = BlockSparse.from_dense(W, block=(2, 2))
    assert fmt.crow.tolist() == [0, 1, 3]
    assert fmt.col.tolist() == [1, 0, 2]
    assert fmt.values.shape == (3, 2, 2)
    assert fmt.values[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert fmt.values[1].tolist() == [[3.0, 0.0], [0.0, 0.0]]
    assert fmt.values[2].tolist() == [[0.0, 0.0], [0.0, 2.0]]
    assert fmt.nbytes == 4 * 3 + 2 * 3 + 3 * 4 * 4


def test_block_sparse_all_zero_weight_stores_no_blocks():
    fmt = BlockSparse.from_dense(torch.zeros(4, 8, dtype=torch.bfloat16), block=(1, 4))
    assert fmt.col.numel() == 0 and fmt.values.shape == (0, 1, 4)
    assert fmt.crow.tolist() == [0, 0, 0, 0, 0]
    assert fmt.nbytes == 4 * 5
    assert torch.equal(fmt.to_dense(), torch.zeros(4, 8, dtype=torch.bfloat16))
    back = BlockSparse.from_state_dict(fmt.to_state_dict(), fmt.meta(), where="w")
    assert torch.equal(back.to_dense(), fmt.to_dense())


def test_block_sparse_empty_block_rows_roundtrip_exactly():
    W = torch.zeros(6, 4)
    W[2:4] = torch.randn(2, 4)
    fmt = BlockSparse.from_dense(W, block=(2, 1))
    assert fmt.crow.tolist() == [0, 0, 4, 4]
    assert torch.equal(fmt.to_dense(), W)


@pytest.mark.parametrize("block_cols, dtype", [(1, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32)])
def test_column_dtype_block_columns_picks_narrowest(block_cols, dtype):
    assert column_dtype(block_cols) is dtype


def test_block_sparse_wide_grid_uses_int32_columns_and_counts_4_bytes():
    W = torch.zeros(1, 2**15 + 1)
    W[0, -1] = 1.0
    W[0, 3] = -1.0
    fmt = BlockSparse.from_dense(W, block=(1, 1))
    assert fmt.col.dtype == torch.int32 and fmt.col.tolist() == [3, 2**15]
    assert fmt.nbytes == 4 * 2 + 4 * 2 + 2 * 4
    assert torch.equal(fmt.to_dense(), W)
    back = BlockSparse.from_state_dict(fmt.to_state_dict(), fmt.meta(), where="w")
    assert torch.equal(back.col, fmt.col)


def test_block_sparse_from_dense_noncontiguous_weight_matches_contiguous():
    Wt = block_weight(1, (2, 3), (2, 2), 0.5, torch.float32).t()  # [6, 4], non-contiguous
    a, b = BlockSparse.from_dense(Wt, block=(2, 2)), BlockSparse.from_dense(Wt.contiguous(), block=(2, 2))
    for name in BlockSparse.ARRAYS:
        assert torch.equal(getattr(a, name), getattr(b, name))


# -- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("block", [(0, 4), (4, -1), (1.0, 4)])
def test_check_block_nonpositive_sides_raise(block):
    with pytest.raises(SparsaError, match=re.escape(f"w: block {block!r} needs two positive integers")):
        check_block((8, 8), block, "w")


def test_block_sparse_from_dense_block_not_tiling_raises():
    with pytest.raises(SparsaError, match=re.escape("layer: weight 8x10 is not tiled by 1x16 blocks")):
        BlockSparse.from_dense(torch.zeros(8, 10), block=(1, 16), where="layer")
    with pytest.raises(SparsaError, match=re.escape("layer: weight 6x16 is not tiled by 4x1 blocks")):
        BlockSparse.from_dense(torch.zeros(6, 16), block=(4, 1), where="layer")


def good_block():
    W = torch.zeros(4, 6)
    W[0, 2], W[3, 5], W[2, 0] = 1.0, 2.0, 3.0
    return BlockSparse.from_dense(W, block=(2, 2))  # crow [0, 1, 3], col [1, 0, 2]


def load(arrays, meta=None):
    return BlockSparse.from_state_dict(arrays, meta if meta is not None else good_block().meta(), where="f:w")


@pytest.mark.parametrize("col", [[1, 0, 3], [1, -1, 2]])
def test_block_sparse_from_state_dict_col_out_of_range_raises(col):
    arrays = {**good_block().to_state_dict(), "col": torch.tensor(col, dtype=torch.int16)}
    with pytest.raises(SparsaError, match=re.escape("f:w: col holds a block column outside [0, 3)")):
        load(arrays)


@pytest.mark.parametrize("col", [[1, 2, 0], [1, 2, 2]])
def test_block_sparse_from_state_dict_col_not_increasing_in_row_raises(col):
    arrays = {**good_block().to_state_dict(), "col": torch.tensor(col, dtype=torch.int16)}
    with pytest.raises(SparsaError, match=re.escape("f:w: col is not strictly increasing within a block row")):
        load(arrays)


def test_block_sparse_from_state_dict_col_decreasing_across_rows_is_accepted():
    arrays = {**good_block().to_state_dict(), "col": torch.tensor([2, 0, 1], dtype=torch.int16)}
    fmt = load(arrays)
    assert fmt.to_dense()[0:2, 4:6].tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("crow", [[0, 1, 2], [0, 1, 4], [1, 1, 3], [0, 2, 1], [3, 3, 0]])
def test_block_sparse_from_state_dict_crow_not_ending_at_nnzb_raises(crow):
    arrays = {**good_block().to_state_dict(), "crow": torch.tensor(crow, dtype=torch.int32)}
    with pytest.raises(SparsaError, match=re.escape("f:w: crow must rise from 0 to nnzb=3")):
        load(arrays)


def test_block_sparse_from_state_dict_crow_decreasing_raises():
    fmt = BlockSparse.from_dense(torch.ones(6, 2), block=(2, 2))  # crow [0, 1, 2, 3]
    arrays = {**fmt.to_state_dict(), "crow": torch.tensor([0, 2, 1, 3], dtype=torch.int32)}
    with pytest.raises(SparsaError, match=re.escape("f:w: crow must rise from 0 to nnzb=3")):
        load(arrays, fmt.meta())


def test_block_sparse_from_state_dict_crow_wrong_dtype_raises():
    arrays = good_block().to_state_dict()
    arrays["crow"] = arrays["crow"].long()
    with pytest.raises(SparsaError, match=re.escape("f:w: crow has dtype torch.int64, expected one of [torch.int32]")):
        load(arrays)


def test_block_sparse_from_state_dict_crow_wrong_length_raises():
    arrays = good_block().to_state_dict()
    arrays["crow"] = torch.tensor([0, 1, 3, 3], dtype=torch.int32)
    with pytest.raises(SparsaError, match=re.escape("f:w: crow has shape [4], expected [3]")):
        load(arrays)


def test_block_sparse_from_state_dict_col_wrong_dtype_raises():
    arrays = good_block().to_state_dict()
    arrays["col"] = arrays["col"].long()
    with pytest.raises(SparsaError, match=re.escape("f:w: col has dtype torch.int64, expected one of")):
        load(arrays)


def test_block_sparse_from_state_dict_values_wrong_block_shape_raises():
    arrays = good_block().to_state_dict()
    arrays["values"] = arrays["values"].reshape(3, 1, 4)
    with pytest.raises(SparsaError, match=re.escape("f:w: values has shape [3, 1, 4], expected [3, 2, 2]")):
        load(arrays)


def test_block_sparse_from_state_dict_values_count_differs_from_col_raises():
    arrays = good_block().to_state_dict()
    arrays["values"] = arrays["values"][:2]
    with pytest.raises(SparsaError, match=re.escape("f:w: values has shape [2, 2, 2], expected [3, 2, 2]")):
        load(arrays)


def test_block_sparse_from_state_dict_values_int_dtype_raises():
    arrays = good_block().to_state_dict()
    arrays["values"] = arrays["values"].to(torch.int32)
    with pytest.raises(SparsaError, match=re.escape("f:w: values has dtype torch.int32")):
        load(arrays)


def test_block_sparse_from_state_dict_block_not_tiling_raises():
    with pytest.raises(SparsaError, match=re.escape("f:w: weight 4x6 is not tiled by 4x4 blocks")):
        load(good_block().to_state_dict(), {"shape": [4, 6], "block": [4, 4]})


def test_block_sparse_from_state_dict_block_not_pair_raises():
    with pytest.raises(SparsaError, match=re.escape("f:w: block (2, 2, 2) is not RxC")):
        load(good_block().to_state_dict(), {"shape": [4, 6], "block": [2, 2, 2]})


def test_block_sparse_from_state_dict_missing_extra_arrays_and_meta_keys_raise():
    arrays = good_block().to_state_dict()
    with pytest.raises(SparsaError, match=re.escape("f:w: missing arrays ['crow']")):
        load({"col": arrays["col"], "values": arrays["values"]})
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['row']")):
        load({**arrays, "row": arrays["crow"]})
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: block metadata has keys ['shape'], expected ['block', 'shape']")):
        load(arrays, {"shape": [4, 6]})
