"""Tests for sparsa.formats.nm: N:M semi-structured sparsity with packed in-group positions."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.nm import NM, check_nm, index_bits

FAST = settings(max_examples=50, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def nm_weight(seed: int, out: int, groups: int, n: int, m: int, dtype) -> torch.Tensor:
    """[out, groups*m] weight with a random number (0..n) of nonzeros in every group of m."""
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(0, n + 1, (out, groups, 1), generator=g)
    rank = torch.rand(out, groups, m, generator=g).argsort(-1).argsort(-1)
    values = torch.randn(out, groups, m, generator=g).abs() + 0.1
    values = values * torch.where(torch.rand(out, groups, m, generator=g) < 0.5, -1.0, 1.0)
    return (values * (rank < count)).reshape(out, groups * m).to(dtype)


@st.composite
def nm_case(draw):
    m = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16, 256]))
    n = draw(st.integers(1, min(m, 6)))
    groups = draw(st.integers(1, 3))
    out = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return nm_weight(seed, out, groups, n, m, dtype), n, m


@FAST
@given(nm_case())
def test_nm_from_dense_at_most_n_per_group_roundtrips_exactly(case):
    W, n, m = case
    fmt = NM.from_dense(W, n=n, m=m)
    dense = fmt.to_dense()
    assert dense.dtype == W.dtype and torch.equal(dense, W)
    assert fmt.values.dtype == W.dtype
    assert fmt.values.shape == (W.shape[0], W.shape[1] // m * n)


@FAST
@given(nm_case())
def test_nm_positions_any_weight_strictly_increase_and_cover_nonzeros(case):
    W, n, m = case
    fmt = NM.from_dense(W, n=n, m=m)
    pos = fmt.positions()
    assert pos.shape == (W.shape[0], W.shape[1] // m, n)
    assert bool((pos.diff(dim=-1) > 0).all()) and bool((pos < m).all()) and bool((pos >= 0).all())
    nonzero = (W != 0).view(W.shape[0], -1, m)
    assert bool(nonzero.gather(-1, pos).sum() == nonzero.sum())  # every nonzero has a slot


@FAST
@given(nm_case(), st.booleans())
def test_nm_state_dict_roundtrip_is_bit_exact(case, via_json):
    W, n, m = case
    fmt = NM.from_dense(W, n=n, m=m)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = NM.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    assert back.meta() == fmt.meta() == {"shape": list(W.shape), "n": n, "m": m}
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.to_dense(), W)


@FAST
@given(nm_case())
def test_nm_nbytes_any_shape_is_slot_values_plus_packed_positions(case):
    W, n, m = case
    fmt = NM.from_dense(W, n=n, m=m)
    slots = W.numel() // m * n
    assert fmt.slots == slots
    assert fmt.nbytes == slots * W.element_size() + math.ceil(slots * index_bits(m) / 8)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 17), (torch.float16, 9), (torch.bfloat16, 9)])
def test_nm_two_four_nbytes_is_exact_bits_per_param(dtype, bits):
    W = nm_weight(0, 4, 4, 2, 4, dtype)  # [4, 16]
    fmt = NM.from_dense(W, n=2, m=4)
    assert 8 * fmt.nbytes == bits * fmt.numel


@pytest.mark.parametrize("m, bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (16, 4), (256, 8)])
def test_index_bits_group_size_gives_ceil_log2(m, bits):
    assert index_bits(m) == bits


def test_nm_from_dense_known_weight_stores_known_slots():
    W = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0]])
    fmt = NM.from_dense(W, n=2, m=4)
    # group 0 has one nonzero at 1, its free slot takes the lowest free position 0
    assert fmt.positions().tolist() == [[[0, 1], [0, 3]]]
    assert fmt.values.tolist() == [[0.0, 5.0, 1.0, 2.0]]
    assert torch.equal(fmt.index, pack_bits(torch.tensor([0, 1, 0, 3]), 2))


def test_nm_all_zero_weight_roundtrips_exactly():
    W = torch.zeros(3, 8, dtype=torch.float16)
    fmt = NM.from_dense(W, n=2, m=4)
    assert torch.equal(fmt.to_dense(), W)
    assert fmt.positions()[0, 0].tolist() == [0, 1]


def test_nm_dense_weight_with_n_equal_m_roundtrips_exactly():
    W = torch.randn(3, 8)
    assert torch.equal(NM.from_dense(W, n=4, m=4).to_dense(), W)


def test_nm_from_dense_noncontiguous_weight_matches_contiguous():
    Wt = nm_weight(3, 4, 2, 2, 4, torch.float32).t().contiguous().t()  # [4, 8], column-major
    assert not Wt.is_contiguous()
    a, b = NM.from_dense(Wt, n=2, m=4), NM.from_dense(Wt.contiguous(), n=2, m=4)
    assert torch.equal(a.values, b.values) and torch.equal(a.index, b.index)
    assert torch.equal(a.to_dense(), Wt)


# -- validation -----------------------------------------------------------------------------

def test_nm_from_dense_too_many_nonzeros_raises():
    W = torch.tensor([[1.0, 2.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0]])
    with pytest.raises(SparsaError, match=re.escape("layer: a group of 4 holds 3 nonzeros, more than N=2")):
        NM.from_dense(W, n=2, m=4, where="layer")


@pytest.mark.parametrize("n, m", [(0, 4), (5, 4), (1, 512), (-1, 2)])
def test_check_nm_bad_pattern_raises(n, m):
    with pytest.raises(SparsaError, match=re.escape(f"w: N:M pattern {n}:{m} needs 1 <= N <= M <= 256")):
        check_nm(n, m, 1024, "w")


def test_nm_from_dense_in_features_not_multiple_of_m_raises():
    with pytest.raises(SparsaError, match=re.escape("w: in_features=6 is not a multiple of M=4")):
        NM.from_dense(torch.zeros(2, 6), n=2, m=4, where="w")


def good_nm():
    W = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0],
                      [3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    return NM.from_dense(W, n=2, m=4)  # 8 slots, 2 bits each -> 2 index bytes


def load(arrays, meta=None, cls=NM):
    return cls.from_state_dict(arrays, meta if meta is not None else good_nm().meta(), where="f:w")


def test_nm_from_state_dict_positions_not_increasing_raises():
    arrays = good_nm().to_state_dict()
    arrays["index"] = pack_bits(torch.tensor([1, 0, 0, 3, 0, 2, 0, 1]), 2)
    with pytest.raises(SparsaError, match=re.escape("f:w: index positions are not strictly increasing in a group")):
        load(arrays)


def test_nm_from_state_dict_duplicate_positions_raises():
    arrays = good_nm().to_state_dict()
    arrays["index"] = pack_bits(torch.tensor([0, 1, 3, 3, 0, 2, 0, 1]), 2)
    with pytest.raises(SparsaError, match="not strictly increasing"):
        load(arrays)


def test_nm_from_state_dict_position_beyond_m_raises():
    W = torch.tensor([[1.0, 0.0, 2.0]])
    fmt = NM.from_dense(W, n=2, m=3)  # positions use 2 bits, so 3 is storable but invalid
    arrays = {**fmt.to_state_dict(), "index": pack_bits(torch.tensor([0, 3]), 2)}
    with pytest.raises(SparsaError, match=re.escape("f:w: index holds a position >= M=3")):
        load(arrays, fmt.meta())


def test_nm_from_state_dict_index_wrong_dtype_raises():
    arrays = good_nm().to_state_dict()
    arrays["index"] = arrays["index"].to(torch.int16)
    with pytest.raises(SparsaError, match=re.escape("f:w: index has dtype torch.int16, expected one of [torch.uint8]")):
        load(arrays)


def test_nm_from_state_dict_index_wrong_length_raises():
    arrays = good_nm().to_state_dict()
    arrays["index"] = torch.cat([arrays["index"], torch.zeros(1, dtype=torch.uint8)])
    with pytest.raises(SparsaError, match=re.escape("f:w: index has shape [3], expected [2]")):
        load(arrays)


def test_nm_from_state_dict_values_wrong_shape_raises():
    arrays = good_nm().to_state_dict()
    arrays["values"] = arrays["values"].reshape(-1)
    with pytest.raises(SparsaError, match=re.escape("f:w: values has shape [8], expected [2, 4]")):
        load(arrays)


def test_nm_from_state_dict_values_wrong_dtype_raises():
    arrays = good_nm().to_state_dict()
    arrays["values"] = arrays["values"].double()
    with pytest.raises(SparsaError, match=re.escape("f:w: values has dtype torch.float64")):
        load(arrays)


def test_nm_from_state_dict_bad_pattern_meta_raises():
    meta = {**good_nm().meta(), "n": 5}
    with pytest.raises(SparsaError, match=re.escape("f:w: N:M pattern 5:4 needs 1 <= N <= M <= 256")):
        load(good_nm().to_state_dict(), meta)


def test_nm_from_state_dict_m_not_dividing_in_features_raises():
    meta = {**good_nm().meta(), "n": 1, "m": 3}
    with pytest.raises(SparsaError, match=re.escape("f:w: in_features=8 is not a multiple of M=3")):
        load(good_nm().to_state_dict(), meta)


def test_nm_from_state_dict_missing_and_extra_arrays_raise():
    arrays = good_nm().to_state_dict()
    with pytest.raises(SparsaError, match=re.escape("f:w: missing arrays ['index']")):
        load({"values": arrays["values"]})
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['mask']")):
        load({**arrays, "mask": torch.zeros(2, dtype=torch.uint8)})


def test_nm_from_state_dict_wrong_meta_keys_raises():
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: nm metadata has keys ['m', 'shape'], expected ['m', 'n', 'shape']")):
        load(good_nm().to_state_dict(), {"shape": [2, 8], "m": 4})
