"""Tests for sparsa.formats.sparse_quant: a 1-bit presence mask plus b-bit group codes of the kept weights."""

import json
import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.sparse_quant import SparseQuant

FAST = settings(max_examples=30, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def layout(draw):
    """(bits, group_size, out, in, density, seed); ``in`` may leave a short last group."""
    bits = draw(st.integers(2, 8))
    group_size = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    out = draw(st.integers(1, 5))
    inp = draw(st.integers(1, 40))
    density = draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return bits, group_size, out, inp, density, seed


def per_column(stat: torch.Tensor, group_size: int, inp: int) -> torch.Tensor:
    """[out, G] group statistic -> [out, in], repeated over each group's columns."""
    return stat.float().repeat_interleave(group_size, dim=1)[:, :inp]


def pruned_on_grid_weight(bits, group_size, out, inp, density, seed):
    """W pruned by a random mask, kept weights exactly on fp16 grids that min-max over the kept reproduces.

    Every group with >= 2 kept weights holds codes 0 and 2**bits-1 among them; one with a single kept
    weight holds code 0 (its fitted scale is 0). Returns (W [out, in] fp32, scale, minimum [out, G] fp16)
    as ``from_dense`` must fit them.
    """
    g = torch.Generator().manual_seed(seed)
    qmax, groups = 2**bits - 1, math.ceil(inp / group_size)
    padded = groups * group_size
    kept = torch.rand(out, padded, generator=g) < density
    kept[:, inp:] = False
    q = torch.randint(0, qmax + 1, (out, groups, group_size), generator=g)
    # anchors: kept real columns sort first, so order[..., 0] and [..., 1] are kept whenever the group has them
    priority = torch.rand(out, padded, generator=g) + 2 * (~kept)
    order = priority.view(out, groups, group_size).argsort(-1)
    q.scatter_(-1, order[..., :1], 0)
    if group_size > 1:
        q.scatter_(-1, order[..., 1:2], qmax)
    exponent = torch.randint(-8, 1, (out, groups), generator=g).float()
    scale = ((torch.rand(out, groups, generator=g) + 1) * 2.0**exponent / 2).to(torch.float16)
    minimum = ((torch.rand(out, groups, generator=g) - 0.5) * 8).to(torch.float16)
    W = q.float() * scale.float()[..., None] + minimum.float()[..., None]  # [out, G, g]
    W = torch.where(kept, W.reshape(out, padded), 0.0)[:, :inp]
    count = kept.view(out, groups, group_size).sum(-1)
    scale = torch.where(count >= 2, scale, torch.zeros_like(scale))
    minimum = torch.where(count >= 1, minimum, torch.zeros_like(minimum))
    return W, kept[:, :inp], scale, minimum


def random_sparse_weight(out, inp, density, seed, dtype=torch.float32, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inp, generator=g) * magnitude * (torch.rand(out, inp, generator=g) < density)).to(dtype)


def expected_nbytes(out, inp, nnz, bits, group_size):
    return math.ceil(out * inp / 8) + math.ceil(nnz * bits / 8) + 2 * 2 * out * math.ceil(inp / group_size)


# -- from_dense ------------------------------------------------------------------------------

@FAST
@given(layout())
def test_sparse_quant_from_dense_pruned_on_grid_weight_roundtrips_exactly(case):
    bits, group_size, out, inp, density, seed = case
    W, kept, scale, minimum = pruned_on_grid_weight(*case)
    assume(bool((W[kept] != 0).all()))  # a kept grid value landing on exactly 0 would read as pruned
    fmt = SparseQuant.from_dense(W, bits=bits, group_size=group_size)
    assert torch.equal(fmt.kept().view(W.shape), kept)
    assert torch.equal(fmt.scale, scale) and torch.equal(fmt.minimum, minimum)
    dense = fmt.to_dense()
    assert dense.dtype == torch.float32 and torch.equal(dense, W)


@FAST
@given(layout(), st.sampled_from(DTYPES), st.sampled_from([1e-3, 1.0, 30.0]))
def test_sparse_quant_from_dense_random_weight_error_within_half_step_on_kept(case, dtype, magnitude):
    bits, group_size, out, inp, density, seed = case
    W = random_sparse_weight(out, inp, density, seed, dtype, magnitude)
    fmt = SparseQuant.from_dense(W, bits=bits, group_size=group_size)
    kept = W != 0
    assert torch.equal(fmt.kept().view(W.shape), kept)
    assert fmt.unpacked_codes().numel() == fmt.nnz == int(kept.sum())
    dense, Wf = fmt.to_dense(), W.float()
    assert bool((dense[~kept] == 0).all())
    # min and max of the kept weights of each group, computed group by group
    groups = math.ceil(inp / group_size)
    lo, hi = torch.zeros(out, groups), torch.zeros(out, groups)
    for j in range(groups):
        block, k = Wf[:, j * group_size:(j + 1) * group_size], kept[:, j * group_size:(j + 1) * group_size]
        lo[:, j] = torch.where(k.any(1), torch.where(k, block, math.inf).amin(1), 0.0)
        hi[:, j] = torch.where(k.any(1), torch.where(k, block, -math.inf).amax(1), 0.0)
    scale, minimum = fmt.scale.float(), fmt.minimum.float()
    exact_scale = (hi - lo) / (2**bits - 1)
    # half a step, plus what fp16 rounding of the scale and the minimum can add at the clamped ends
    tol = scale / 2 + (minimum - lo).abs() + (2**bits - 1) * (scale - exact_scale).abs() + 1e-6 * (1 + hi.abs().max())
    err = (dense - Wf).abs()
    assert bool((err <= per_column(tol, group_size, inp))[kept].all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_quant_from_dense_value_dtypes_quantize_through_fp32(dtype):
    W = random_sparse_weight(3, 20, 0.5, seed=7, dtype=dtype)
    fmt = SparseQuant.from_dense(W, bits=4, group_size=8)
    ref = SparseQuant.from_dense(W.float(), bits=4, group_size=8)
    for name in SparseQuant.ARRAYS:
        assert torch.equal(getattr(fmt, name), getattr(ref, name))
    assert fmt.to_dense().dtype == torch.float32
    assert torch.equal(fmt.to_dense(dtype), ref.to_dense().to(dtype))


def test_sparse_quant_from_dense_empty_group_stores_zero_scale_and_minimum():
    W = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 2.0, 0.0, 0.0, 5.0]])
    fmt = SparseQuant.from_dense(W, bits=2, group_size=4)
    assert fmt.scale.tolist() == [[0.0, 1.0, 0.0]] and fmt.minimum.tolist() == [[0.0, -1.0, 5.0]]
    assert fmt.unpacked_codes().tolist() == [0, 3, 0]
    assert torch.equal(fmt.to_dense(), W)


def test_sparse_quant_from_dense_ignores_pruned_zeros_in_grid():
    # with the zeros counted the grid would span [0, 15]; over the kept weights it spans [12, 15]
    W = torch.tensor([[12.0, 0.0, 13.0, 15.0, 0.0, 14.0, 0.0, 0.0]])
    fmt = SparseQuant.from_dense(W, bits=2, group_size=8)
    assert fmt.scale.tolist() == [[1.0]] and fmt.minimum.tolist() == [[12.0]]
    assert torch.equal(fmt.to_dense(), W)


def test_sparse_quant_from_dense_all_zero_weight_keeps_nothing():
    fmt = SparseQuant.from_dense(torch.zeros(3, 10), bits=3, group_size=4)
    assert fmt.codes.numel() == 0 and fmt.unpacked_codes().numel() == 0
    assert fmt.nbytes == 4 + 0 + 2 * 2 * 3 * 3 == expected_nbytes(3, 10, 0, 3, 4)
    assert not fmt.scale.any() and not fmt.minimum.any()
    assert torch.equal(fmt.to_dense(), torch.zeros(3, 10))


def test_sparse_quant_from_dense_noncontiguous_weight_matches_contiguous():
    W = random_sparse_weight(6, 9, 0.5, seed=3)
    a = SparseQuant.from_dense(W.t(), bits=3, group_size=4)
    b = SparseQuant.from_dense(W.t().contiguous(), bits=3, group_size=4)
    for name in SparseQuant.ARRAYS:
        assert torch.equal(getattr(a, name), getattr(b, name))


# -- from_codes ------------------------------------------------------------------------------

@FAST
@given(layout())
def test_sparse_quant_from_codes_to_dense_matches_reference(case):
    bits, group_size, out, inp, density, seed = case
    g = torch.Generator().manual_seed(seed)
    groups = math.ceil(inp / group_size)
    kept = torch.rand(out, inp, generator=g) < density
    codes = torch.randint(0, 2**bits, (out, inp), generator=g)
    codes[~kept] = torch.randint(-3, 999, (int((~kept).sum()),), generator=g)  # ignored
    scale = torch.rand(out, groups, generator=g).to(torch.float16)
    minimum = torch.randn(out, groups, generator=g).to(torch.float16)
    fmt = SparseQuant.from_codes(kept=kept, codes=codes, scale=scale, minimum=minimum, bits=bits,
                                 group_size=group_size)
    ref = codes.float() * per_column(scale, group_size, inp) + per_column(minimum, group_size, inp)
    assert torch.equal(fmt.to_dense(), torch.where(kept, ref, 0.0))
    assert torch.equal(fmt.kept(), kept.reshape(-1))
    assert torch.equal(fmt.mask, pack_bits(kept, 1))
    assert torch.equal(fmt.unpacked_codes(), codes[kept].to(torch.uint8))
    assert fmt.scale is scale and fmt.minimum is minimum


def test_sparse_quant_codes_pack_kept_codes_row_major():
    kept = torch.tensor([[True, False, True], [False, True, True]])
    codes = torch.tensor([[1, 9, 2], [9, 3, 0]])
    stats = torch.ones(2, 1, dtype=torch.float16)
    fmt = SparseQuant.from_codes(kept=kept, codes=codes, scale=stats, minimum=stats, bits=2, group_size=4)
    assert fmt.mask.tolist() == [0b00110101]
    assert fmt.codes.tolist() == [0b00111001]  # 1, 2, 3, 0 at 2 bits, LSB first
    assert fmt.to_dense().tolist() == [[2.0, 0.0, 3.0], [0.0, 4.0, 1.0]]


# -- state dict, size --------------------------------------------------------------------------

@FAST
@given(layout(), st.booleans())
def test_sparse_quant_state_dict_roundtrip_is_bit_exact(case, via_json):
    bits, group_size, out, inp, density, seed = case
    fmt = SparseQuant.from_dense(random_sparse_weight(out, inp, density, seed), bits=bits, group_size=group_size)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = SparseQuant.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    assert back.meta() == fmt.meta() == {"shape": [out, inp], "bits": bits, "group_size": group_size}
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.to_dense(), fmt.to_dense())


@FAST
@given(layout())
def test_sparse_quant_nbytes_any_shape_is_mask_plus_kept_codes_plus_fp16_stats(case):
    bits, group_size, out, inp, density, seed = case
    W = random_sparse_weight(out, inp, density, seed)
    fmt = SparseQuant.from_dense(W, bits=bits, group_size=group_size)
    assert fmt.nbytes == expected_nbytes(out, inp, int((W != 0).sum()), bits, group_size)
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.to_state_dict().values())


def test_sparse_quant_nbytes_ragged_last_group_counts_its_stats():
    W = torch.arange(1.0, 31.0).view(3, 10)  # nnz 30, groups of 4, 4, 2
    fmt = SparseQuant.from_dense(W, bits=3, group_size=4)
    assert fmt.scale.shape == (3, 3)
    assert fmt.nbytes == 4 + 12 + 2 * 2 * 3 * 3 == expected_nbytes(3, 10, 30, 3, 4)


def test_sparse_quant_half_sparse_4bit_group128_is_3_25_bits_per_param():
    g = torch.Generator().manual_seed(0)
    order = torch.rand(64, 256, generator=g).argsort(dim=1)
    kept = order < 128  # exactly half of each row, unstructured
    W = torch.where(kept, torch.rand(64, 256, generator=g) + 0.5, 0.0)
    fmt = SparseQuant.from_dense(W, bits=4, group_size=128)
    assert fmt.nnz == 64 * 128
    assert fmt.nbytes == 2048 + 4096 + 2 * 2 * 64 * 2
    assert 8 * fmt.nbytes / fmt.numel == 1 + 0.5 * 4 + 32 / 128 == 3.25


def test_sparse_quant_meta_and_arrays_are_named():
    fmt = SparseQuant.from_dense(torch.eye(3, 8), bits=3, group_size=4)
    assert fmt.meta() == {"shape": [3, 8], "bits": 3, "group_size": 4}
    assert fmt.ARRAYS == ("mask", "codes", "scale", "minimum") and fmt.format_name == "sparse_quant"
    assert fmt.mask.shape == (3,) and fmt.codes.shape == (2,) and fmt.scale.shape == (3, 2)


# -- validation -----------------------------------------------------------------------------

def good_sparse_quant():
    W = torch.tensor([[0.0, 1.0, 2.0, 0.0, 3.0, 0.0], [4.0, 0.0, 0.0, 5.0, 6.0, 7.0]])
    return SparseQuant.from_dense(W, bits=3, group_size=4)  # 12 weights, nnz 7 -> 2 mask bytes, 3 code bytes


def load(arrays, meta=None):
    return SparseQuant.from_state_dict(arrays, meta if meta is not None else good_sparse_quant().meta(), where="f:w")


@pytest.mark.parametrize("length", [1, 3])
def test_sparse_quant_from_state_dict_mask_wrong_length_raises(length):
    arrays = {**good_sparse_quant().to_state_dict(), "mask": torch.zeros(length, dtype=torch.uint8)}
    with pytest.raises(SparsaError, match=re.escape(f"f:w: mask has shape [{length}], expected [2]")):
        load(arrays)


def test_sparse_quant_from_state_dict_mask_wrong_dtype_raises():
    arrays = good_sparse_quant().to_state_dict()
    arrays["mask"] = arrays["mask"].to(torch.int8)
    with pytest.raises(SparsaError, match=re.escape("f:w: mask has dtype torch.int8, expected one of [torch.uint8]")):
        load(arrays)


def test_sparse_quant_from_state_dict_codes_shorter_than_popcount_raises():
    arrays = good_sparse_quant().to_state_dict()
    arrays["codes"] = arrays["codes"][:2]
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: codes has shape [2], expected [3]: the mask keeps 7 weights at 3 bits each")):
        load(arrays)


def test_sparse_quant_from_state_dict_extra_mask_bits_raise_codes_length_mismatch():
    arrays = good_sparse_quant().to_state_dict()
    arrays["mask"] = arrays["mask"].clone()
    arrays["mask"][0] |= 0b00001001  # two more kept weights: 9 * 3 bits need 4 bytes
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: codes has shape [3], expected [4]: the mask keeps 9 weights at 3 bits each")):
        load(arrays)


def test_sparse_quant_from_state_dict_codes_wrong_dtype_raises():
    arrays = good_sparse_quant().to_state_dict()
    arrays["codes"] = arrays["codes"].to(torch.int16)
    with pytest.raises(SparsaError, match=re.escape("f:w: codes has dtype torch.int16, expected one of [torch.uint8]")):
        load(arrays)


def test_sparse_quant_from_state_dict_codes_not_tensor_raises():
    arrays = {**good_sparse_quant().to_state_dict(), "codes": [1, 2, 3]}
    with pytest.raises(SparsaError, match=re.escape("f:w: codes is not a tensor")):
        load(arrays)


@pytest.mark.parametrize("name", ["scale", "minimum"])
def test_sparse_quant_from_state_dict_scale_wrong_shape_raises(name):
    arrays = good_sparse_quant().to_state_dict()
    arrays[name] = arrays[name][:, :1]
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} has shape [2, 1], expected [2, 2]")):
        load(arrays)


@pytest.mark.parametrize("name", ["scale", "minimum"])
def test_sparse_quant_from_state_dict_scale_not_fp16_raises(name):
    arrays = good_sparse_quant().to_state_dict()
    arrays[name] = arrays[name].to(torch.bfloat16)
    with pytest.raises(SparsaError, match=re.escape(
            f"f:w: {name} has dtype torch.bfloat16, expected one of [torch.float16]")):
        load(arrays)


@pytest.mark.parametrize("name, bad", [("scale", float("inf")), ("minimum", float("nan")), ("scale", float("-inf"))])
def test_sparse_quant_from_state_dict_nonfinite_scale_raises(name, bad):
    arrays = good_sparse_quant().to_state_dict()
    arrays[name] = arrays[name].clone()
    arrays[name][1, 1] = bad
    with pytest.raises(SparsaError, match=re.escape("f:w: scale or minimum holds inf/nan")):
        load(arrays)


@pytest.mark.parametrize("bits", [0, 1, 9, 4.0])
def test_sparse_quant_from_state_dict_bits_out_of_range_raises(bits):
    meta = {**good_sparse_quant().meta(), "bits": bits}
    with pytest.raises(SparsaError, match=re.escape(f"f:w: bits={bits!r} outside 2..8")):
        load(good_sparse_quant().to_state_dict(), meta)


@pytest.mark.parametrize("group_size", [0, -4, 4.0])
def test_sparse_quant_from_state_dict_group_size_not_positive_int_raises(group_size):
    meta = {**good_sparse_quant().meta(), "group_size": group_size}
    with pytest.raises(SparsaError, match=re.escape(f"f:w: group_size={group_size!r} is not a positive integer")):
        load(good_sparse_quant().to_state_dict(), meta)


def test_sparse_quant_from_state_dict_group_size_disagreeing_with_scale_raises():
    meta = {**good_sparse_quant().meta(), "group_size": 2}  # ceil(6 / 2) = 3 groups, the arrays hold 2
    with pytest.raises(SparsaError, match=re.escape("f:w: scale has shape [2, 2], expected [2, 3]")):
        load(good_sparse_quant().to_state_dict(), meta)


def test_sparse_quant_from_state_dict_bits_disagreeing_with_codes_raises():
    meta = {**good_sparse_quant().meta(), "bits": 4}  # 7 codes at 4 bits need 4 bytes, not 3
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: codes has shape [3], expected [4]: the mask keeps 7 weights at 4 bits each")):
        load(good_sparse_quant().to_state_dict(), meta)


def test_sparse_quant_from_state_dict_wrong_meta_keys_raises():
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: sparse_quant metadata has keys ['bits', 'shape'], expected ['bits', 'group_size', 'shape']")):
        load(good_sparse_quant().to_state_dict(), {"shape": [2, 6], "bits": 3})


@pytest.mark.parametrize("bits", [1, 9])
def test_sparse_quant_from_codes_bits_out_of_range_raises(bits):
    kept = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(SparsaError, match=re.escape(f"w: bits={bits} outside 2..8")):
        SparseQuant.from_codes(kept=kept, codes=torch.zeros(1, 4, dtype=torch.int64), scale=torch.ones(1, 1).half(),
                               minimum=torch.zeros(1, 1).half(), bits=bits, group_size=4, where="w")


@pytest.mark.parametrize("bad, found", [(16, "[0, 16]"), (-1, "[-1, 3]")])
def test_sparse_quant_from_codes_code_out_of_range_raises(bad, found):
    kept = torch.tensor([[True, True, False, True]])
    codes = torch.tensor([[0, 3, 99, 2]])
    codes[0, 1] = bad if bad > 0 else 3
    codes[0, 0] = bad if bad < 0 else 0
    with pytest.raises(SparsaError, match=re.escape(
            f"w: codes at kept positions must lie in [0, 16) for bits=4, got {found}")):
        SparseQuant.from_codes(kept=kept, codes=codes, scale=torch.ones(1, 1).half(),
                               minimum=torch.zeros(1, 1).half(), bits=4, group_size=4, where="w")


@pytest.mark.parametrize("kept, message", [
    (torch.ones(2, 4, dtype=torch.uint8), "w: kept must be an [out, in] bool tensor, got [2, 4] torch.uint8"),
    (torch.ones(8, dtype=torch.bool), "w: kept must be an [out, in] bool tensor, got [8] torch.bool"),
])
def test_sparse_quant_from_codes_kept_not_2d_bool_raises(kept, message):
    with pytest.raises(SparsaError, match=re.escape(message)):
        SparseQuant.from_codes(kept=kept, codes=torch.zeros(2, 4, dtype=torch.int64), scale=torch.ones(2, 1).half(),
                               minimum=torch.zeros(2, 1).half(), bits=4, group_size=4, where="w")


@pytest.mark.parametrize("codes, message", [
    (torch.zeros(2, 3, dtype=torch.int64), "w: codes must have shape [2, 4] like kept, got [2, 3]"),
    (torch.zeros(2, 4), "w: codes must be integer, got torch.float32"),
    (torch.zeros(2, 4, dtype=torch.bool), "w: codes must be integer, got torch.bool"),
])
def test_sparse_quant_from_codes_codes_wrong_shape_or_dtype_raises(codes, message):
    with pytest.raises(SparsaError, match=re.escape(message)):
        SparseQuant.from_codes(kept=torch.ones(2, 4, dtype=torch.bool), codes=codes, scale=torch.ones(2, 1).half(),
                               minimum=torch.zeros(2, 1).half(), bits=4, group_size=4, where="w")


def test_sparse_quant_from_codes_scale_wrong_shape_raises():
    with pytest.raises(SparsaError, match=re.escape("w: scale has shape [2, 1], expected [2, 2]")):
        SparseQuant.from_codes(kept=torch.ones(2, 5, dtype=torch.bool), codes=torch.zeros(2, 5, dtype=torch.int64),
                               scale=torch.ones(2, 1).half(), minimum=torch.zeros(2, 2).half(), bits=4,
                               group_size=4, where="w")


@pytest.mark.parametrize("bits", [0, 1, 9])
def test_sparse_quant_from_dense_bits_out_of_range_raises(bits):
    with pytest.raises(SparsaError, match=rf"^layer: --bits {bits} is outside 2\.\.8$"):
        SparseQuant.from_dense(torch.randn(2, 8), bits=bits, group_size=4, where="layer")


@pytest.mark.parametrize("group_size", [0, -8])
def test_sparse_quant_from_dense_group_size_not_positive_raises(group_size):
    with pytest.raises(SparsaError, match=rf"^layer: --group-size {group_size} must be positive$"):
        SparseQuant.from_dense(torch.randn(2, 8), bits=4, group_size=group_size, where="layer")


@pytest.mark.parametrize("W, message", [
    (torch.ones(8), "layer: W must be an [out, in] float tensor, got [8] torch.float32"),
    (torch.ones(2, 8, dtype=torch.int32), "layer: W must be an [out, in] float tensor, got [2, 8] torch.int32"),
])
def test_sparse_quant_from_dense_not_2d_float_raises(W, message):
    with pytest.raises(SparsaError, match=re.escape(message)):
        SparseQuant.from_dense(W, bits=4, group_size=4, where="layer")


@pytest.mark.parametrize("big", [-70000.0, 1e6, float("inf"), float("-inf"), float("nan")])
def test_sparse_quant_from_dense_beyond_fp16_range_raises(big):
    W = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 3.0, big, 0.0]])
    with pytest.raises(SparsaError, match=re.escape(
            "big.w: kept weights beyond the fp16 range (|w| > 65504) or non-finite give non-finite "
            "fp16 group statistics")):
        SparseQuant.from_dense(W, bits=4, group_size=4, where="big.w")


def test_sparse_quant_from_dense_max_beyond_fp16_with_finite_statistics_is_stored():
    # minimum 3 and scale (70000 - 3) / 15 both fit fp16; the fp32 decode reaches 70000 within half a step
    W = torch.tensor([[3.0, 0.0, 70000.0, 0.0]])
    fmt = SparseQuant.from_dense(W, bits=4, group_size=4)
    assert fmt.minimum.item() == 3.0 and fmt.unpacked_codes().tolist() == [0, 15]
    assert abs(fmt.to_dense()[0, 2].item() - 70000.0) <= fmt.scale.float().item() / 2
