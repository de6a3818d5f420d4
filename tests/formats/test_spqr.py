"""Tests for sparsa.formats.spqr: permuted group codes, 2nd-level quantized statistics, CSR outliers."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import SpQR, get_format
from sparsa.formats.bitpack import index_bits, pack_bits
from sparsa.formats.spqr import count_bits, second_level_quantize

FAST = settings(max_examples=30, deadline=None)


def random_stats(g: torch.Generator, runs: int, groups: int) -> torch.Tensor:
    """[runs, groups, 2] fp16 (step, minimum); about one step in five is 0."""
    exponent = torch.randint(-10, 1, (runs, groups), generator=g).float()
    step = torch.rand(runs, groups, generator=g) * 2.0**exponent * (torch.rand(runs, groups, generator=g) > 0.2)
    minimum = (torch.rand(runs, groups, generator=g) - 0.5) * 8
    return torch.stack([step, minimum], dim=-1).to(torch.float16)


def random_parts(seed: int, out: int, inp: int, b1: int, b2: int, bits: int, stat_bits: int, density: float):
    """Keyword arguments of ``SpQR.from_parts`` with random codes, stats, outliers and permutation."""
    g = torch.Generator().manual_seed(seed)
    groups = inp // b1
    return dict(
        codes=torch.randint(0, 2**bits, (out, inp), generator=g).to(torch.uint8),
        scale_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g).to(torch.uint8),
        zero_codes=torch.randint(0, 2**stat_bits, (out, groups), generator=g).to(torch.uint8),
        scale_stats=random_stats(g, out // b2, groups),
        zero_stats=random_stats(g, out // b2, groups),
        outlier_mask=torch.rand(out, inp, generator=g) < density,
        outlier_values_dense=torch.randn(out, inp, generator=g) * 10,
        perm=torch.randperm(inp, generator=g),
        bits=bits, group_size=b1, stat_bits=stat_bits, stat_group_size=b2,
    )


def reference_dense(p: dict) -> torch.Tensor:
    """Straightforward fp32 decode of the parts: index the stats, dequantize, un-permute, overwrite."""
    out, inp = p["codes"].shape
    run = torch.arange(out) // p["stat_group_size"]  # [out] second-level run of each row
    s = p["scale_codes"].float() * p["scale_stats"][run, :, 0].float() + p["scale_stats"][run, :, 1].float()
    z = p["zero_codes"].float() * p["zero_stats"][run, :, 0].float() + p["zero_stats"][run, :, 1].float()
    group = torch.arange(inp) // p["group_size"]  # [in] first-level group of each permuted column
    Wp = s[:, group] * (p["codes"].float() - z[:, group])
    W = Wp.index_select(1, torch.argsort(p["perm"]))  # W[:, j] = Wp[:, k] where perm[k] = j
    return torch.where(p["outlier_mask"], p["outlier_values_dense"].half().float(), W)


@st.composite
def spqr_case(draw):
    b1 = draw(st.sampled_from([4, 8, 16]))
    b2 = draw(st.sampled_from([2, 4, 16]))
    out = b2 * draw(st.integers(1, 3))
    inp = b1 * draw(st.integers(1, 4))
    bits, stat_bits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    return random_parts(draw(st.integers(0, 2**31 - 1)), out, inp, b1, b2, bits, stat_bits, density)


@st.composite
def stats_case(draw):
    bits = draw(st.integers(2, 8))
    group_rows = draw(st.sampled_from([1, 2, 4, 16]))
    out = group_rows * draw(st.integers(1, 3))
    groups = draw(st.integers(1, 5))
    magnitude = draw(st.sampled_from([1e-4, 1.0, 300.0]))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    v = torch.randn(out, groups, generator=g) * magnitude + offset
    return v, bits, group_rows


# -- second-level quantization -------------------------------------------------------------

@FAST
@given(stats_case())
def test_second_level_quantize_any_statistics_decode_reproduces_v_hat_exactly(case):
    v, bits, group_rows = case
    codes, stats, v_hat = second_level_quantize(v, bits, group_rows)
    out, groups = v.shape
    assert codes.dtype == torch.uint8 and codes.shape == (out, groups) and int(codes.max()) < 2**bits
    assert stats.dtype == torch.float16 and stats.shape == (out // group_rows, groups, 2)
    assert v_hat.dtype == torch.float32
    per_row = stats[torch.arange(out) // group_rows]  # [out, G, 2]
    assert torch.equal(codes.float() * per_row[..., 0].float() + per_row[..., 1].float(), v_hat)


@FAST
@given(stats_case())
def test_second_level_quantize_any_statistics_error_within_half_step(case):
    v, bits, group_rows = case
    codes, stats, v_hat = second_level_quantize(v, bits, group_rows)
    qmax = 2**bits - 1
    v3 = v.view(-1, group_rows, v.shape[1])  # [T, β2, G]
    lo, hi = v3.amin(1), v3.amax(1)
    step, minimum = stats[..., 0].float(), stats[..., 1].float()
    # half a step, plus what fp16 rounding of the step and the minimum adds at the clamped ends
    tol = step / 2 + (minimum - lo).abs() + qmax * (step - (hi - lo) / qmax).abs() + 1e-6 * (1 + v.abs().max())
    err = (v_hat.view_as(v3) - v3).abs()
    assert bool((err <= tol[:, None]).all()), float((err - tol[:, None]).max())


@FAST
@given(st.integers(2, 8), st.sampled_from([2, 4, 16]), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_second_level_quantize_on_grid_statistics_roundtrip_exactly(bits, group_rows, groups, seed):
    g = torch.Generator().manual_seed(seed)
    qmax, runs = 2**bits - 1, 3
    stats = random_stats(g, runs, groups)
    stats[..., 0] = stats[..., 0].clamp(min=2.0**-9)  # nonzero steps
    codes = torch.randint(0, qmax + 1, (runs, group_rows, groups), generator=g)
    codes[:, 0], codes[:, -1] = 0, qmax  # every run reaches both ends of its grid
    v = codes.float() * stats[:, None, :, 0].float() + stats[:, None, :, 1].float()
    got_codes, got_stats, v_hat = second_level_quantize(v.reshape(-1, groups), bits, group_rows)
    assert torch.equal(got_stats, stats)
    assert torch.equal(got_codes, codes.reshape(-1, groups).to(torch.uint8))
    assert torch.equal(v_hat, v.reshape(-1, groups))


@FAST
@given(st.integers(2, 8), st.sampled_from([1, 2, 4, 16]), st.floats(-1e4, 1e4, allow_nan=False))
def test_second_level_quantize_constant_run_gives_zero_step_and_fp16_minimum(bits, group_rows, value):
    v = torch.full((2 * group_rows, 3), value)
    codes, stats, v_hat = second_level_quantize(v, bits, group_rows)
    assert bool((stats[..., 0] == 0).all())
    assert bool((stats[..., 1] == torch.tensor(value).half()).all())
    assert int(codes.max()) == 0
    assert torch.equal(v_hat, torch.full_like(v, torch.tensor(value).half().float().item()))


def test_second_level_quantize_known_runs_give_known_codes():
    v = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [1.4, -2.0], [0.6, 2.0]])
    codes, stats, v_hat = second_level_quantize(v, 2, 2)

    def fp16(x):
        return torch.tensor(x).half().item()

    assert stats.shape == (3, 2, 2)
    assert codes.tolist() == [[0, 0], [3, 0], [0, 0], [3, 0], [3, 0], [0, 3]]
    assert stats[0].tolist() == [[fp16(1 / 3), 0.0], [0.0, 1.0]]  # column 1 is constant: step 0
    assert stats[1].tolist() == [[fp16(1 / 3), 2.0], [0.0, 1.0]]
    assert stats[2].tolist() == [[fp16(0.8 / 3), fp16(0.6)], [fp16(4 / 3), -2.0]]
    assert v_hat[:, 1].tolist() == [1.0, 1.0, 1.0, 1.0, -2.0, -2.0 + 3 * fp16(4 / 3)]


@pytest.mark.parametrize("v", [[[-70000.0], [0.0]], [[70000.0], [70000.0]], [[float("nan")], [0.0]],
                               [[float("inf")], [0.0]]])
def test_second_level_quantize_beyond_fp16_raises(v):
    with pytest.raises(SparsaError, match=re.escape("s: statistics beyond the fp16 range (|v| > 65504)")):
        second_level_quantize(torch.tensor(v), 3, 2, where="s")


@pytest.mark.parametrize("bits", [1, 9])
def test_second_level_quantize_bits_out_of_range_raises(bits):
    with pytest.raises(SparsaError, match=re.escape(f"statistics: stat_bits={bits} outside 2..8")):
        second_level_quantize(torch.zeros(4, 2), bits, 2)


@pytest.mark.parametrize("group_rows", [3, 0, -2])
def test_second_level_quantize_rows_not_dividing_raises(group_rows):
    with pytest.raises(SparsaError, match=re.escape(f"statistics: out_features=4 % stat_group_size={group_rows} != 0")):
        second_level_quantize(torch.zeros(4, 2), 3, group_rows)


# -- decode ----------------------------------------------------------------------------------

@FAST
@given(spqr_case())
def test_spqr_from_parts_any_parts_to_dense_matches_reference_exactly(parts):
    fmt = SpQR.from_parts(**parts)
    dense = fmt.to_dense()
    assert dense.dtype == torch.float32 and dense.shape == parts["codes"].shape
    assert torch.equal(dense, reference_dense(parts))


@FAST
@given(spqr_case(), st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_spqr_to_dense_requested_dtype_casts_fp32_decode(parts, dtype):
    dense = SpQR.from_parts(**parts).to_dense(dtype)
    assert dense.dtype == dtype and torch.equal(dense, reference_dense(parts).to(dtype))


@FAST
@given(spqr_case())
def test_spqr_outlier_free_codes_plus_deltas_decode_to_the_dense_weight(parts):
    """The kernels' form: codes under outliers reset near the zero-point, each outlier a delta on
    top. Dequantized, they give ``to_dense`` (permuted columns) exactly off the outliers, and at an
    outlier the stored value to the rounding of forming and adding the delta (a few fp32 ulps of
    the terms involved)."""
    fmt = SpQR.from_parts(**parts)
    q, pos, delta = fmt.outlier_free_codes()
    rows = fmt.outliers()[0]
    s, z = fmt.first_level_stats()
    g = fmt.group_size
    expanded = q.view(fmt.shape[0], fmt.groups, g).float()
    w = (s[..., None] * (expanded - z[..., None])).view(fmt.shape)
    reset = w[rows, pos]
    dense = fmt.to_dense()[:, fmt.permutation()]
    assert q.dtype == torch.uint8 and pos.shape == delta.shape == rows.shape
    nearest = torch.round(z[rows, pos // g]).clamp(0, 2**fmt.bits - 1)  # the code nearest the zero-point
    assert torch.equal(q[rows, pos].float(), nearest)
    off = torch.ones_like(dense, dtype=torch.bool)
    off[rows, pos] = False
    assert torch.equal(w[off], dense[off])
    value = dense[rows, pos]
    bound = 4 * torch.finfo(torch.float32).eps * (reset.abs() + delta.abs() + value.abs())
    assert bool(((reset + delta - value).abs() <= bound).all())


@FAST
@given(spqr_case())
def test_spqr_from_parts_accessors_return_the_parts(parts):
    fmt = SpQR.from_parts(**parts)
    assert torch.equal(fmt.unpacked_codes(), parts["codes"])
    assert torch.equal(fmt.permutation(), parts["perm"]) and fmt.permutation().dtype == torch.int64
    rows, cols, values = fmt.outliers()
    mask = parts["outlier_mask"]
    assert torch.equal(torch.stack([rows, cols], 1), mask.nonzero())
    assert rows.dtype == cols.dtype == torch.int64 and values.dtype == torch.float16
    assert torch.equal(values, parts["outlier_values_dense"][mask].half())
    assert torch.equal(fmt.outlier_rowptr(), torch.cat([torch.zeros(1), mask.sum(1).cumsum(0)]).long())
    s, z = fmt.first_level_stats()
    run = torch.arange(mask.shape[0]) // parts["stat_group_size"]
    stats = parts["scale_stats"][run]
    assert torch.equal(s, parts["scale_codes"].float() * stats[..., 0].float() + stats[..., 1].float())
    assert s.dtype == z.dtype == torch.float32 and z.shape == s.shape == parts["scale_codes"].shape


@FAST
@given(stats_case(), st.integers(2, 8))
def test_spqr_first_level_stats_from_second_level_quantize_equal_v_hat(case, bits):
    v, stat_bits, b2 = case
    out, groups = v.shape
    scale_codes, scale_stats, s_hat = second_level_quantize(v.abs(), stat_bits, b2)
    zero_codes, zero_stats, z_hat = second_level_quantize(v, stat_bits, b2)
    fmt = SpQR.from_parts(codes=torch.zeros(out, 2 * groups, dtype=torch.uint8), scale_codes=scale_codes,
                          zero_codes=zero_codes, scale_stats=scale_stats, zero_stats=zero_stats,
                          outlier_mask=torch.zeros(out, 2 * groups, dtype=torch.bool),
                          outlier_values_dense=torch.zeros(out, 2 * groups), perm=torch.arange(2 * groups),
                          bits=bits, group_size=2, stat_bits=stat_bits, stat_group_size=b2)
    s, z = fmt.first_level_stats()
    assert torch.equal(s, s_hat) and torch.equal(z, z_hat)
    assert torch.equal(fmt.to_dense(), (s_hat * -z_hat).repeat_interleave(2, dim=1))


def test_spqr_known_parts_give_known_csr_and_dense():
    p = good_parts()
    fmt = SpQR.from_parts(**p)
    assert fmt.outlier_rowptr().tolist() == [0, 2, 2, 3, 3]
    assert fmt.outlier_counts.tolist() == [2, 1]  # counts 2, 0, 1, 0 at 4 bits each
    assert fmt.outlier_col.tolist() == [1, 5, 3] and fmt.outlier_col.dtype == torch.int16
    assert fmt.outlier_values.tolist() == [1.5, -2.0, 100.0]
    # 3-bit perm: sum(perm[i] << 3i) = 0x9563C3, little-endian bytes
    assert fmt.perm.tolist() == [0xC3, 0x63, 0x95] and fmt.perm.dtype == torch.uint8
    assert fmt.permutation().tolist() == [3, 0, 7, 1, 6, 2, 5, 4]
    dense = fmt.to_dense()
    assert dense[0, 1].item() == 1.5 and dense[0, 5].item() == -2.0 and dense[2, 3].item() == 100.0
    # identity step 1 / minimum 0 stats: s = scale code, z = zero code; column 3 is permuted column 0
    s, q, z = p["scale_codes"][1, 0].item(), p["codes"][1, 0].item(), p["zero_codes"][1, 0].item()
    assert dense[1, 3].item() == s * (q - z)
    assert torch.equal(dense, reference_dense(p))


def test_spqr_no_outliers_stores_empty_csr():
    p = {**good_parts(), "outlier_mask": torch.zeros(4, 8, dtype=torch.bool)}
    fmt = SpQR.from_parts(**p)
    assert fmt.outlier_rowptr().tolist() == [0, 0, 0, 0, 0]
    assert fmt.outlier_col.shape == (0,) and fmt.outlier_values.shape == (0,)
    assert torch.equal(fmt.to_dense(), reference_dense(p))


def test_spqr_wide_weight_uses_int32_columns_and_16_bit_counts_and_perm():
    p = random_parts(3, 2, 2**15 + 8, 8, 2, 2, 3, 0.0)
    p["outlier_mask"][1, [0, 2**15 + 7]] = True
    fmt = SpQR.from_parts(**p)
    assert fmt.outlier_col.dtype == torch.int32
    assert fmt.outlier_col.tolist() == [0, 2**15 + 7]
    inp, groups = 2**15 + 8, (2**15 + 8) // 8
    assert fmt.nbytes == (2 * inp * 2 // 8 + 2 * math.ceil(2 * groups * 3 / 8) + 2 * groups * 2 * 2
                          + 2 * 2 + 2 * (4 + 2) + 2 * inp)
    assert torch.equal(fmt.to_dense(), reference_dense(p))
    back = SpQR.from_state_dict(fmt.to_state_dict(), fmt.meta(), where="w")
    assert torch.equal(back.permutation(), p["perm"])


# -- I/O and size --------------------------------------------------------------------------

@FAST
@given(spqr_case(), st.booleans())
def test_spqr_state_dict_roundtrip_is_bit_exact(parts, via_json):
    fmt = SpQR.from_parts(**parts)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = SpQR.from_state_dict(fmt.to_state_dict(), meta, where="f:w")
    assert back.meta() == fmt.meta()
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.to_dense(), fmt.to_dense())


@FAST
@given(spqr_case())
def test_spqr_nbytes_any_parts_matches_formula(parts):
    fmt = SpQR.from_parts(**parts)
    (out, inp), b1, b2 = parts["codes"].shape, parts["group_size"], parts["stat_group_size"]
    G, T, nnz = inp // b1, out // b2, int(parts["outlier_mask"].sum())
    expected = (math.ceil(out * inp * parts["bits"] / 8) + 2 * math.ceil(out * G * parts["stat_bits"] / 8)
                + 2 * (T * G * 2 * 2) + math.ceil(out * count_bits(inp) / 8) + nnz * (2 + 2)
                + math.ceil(inp * index_bits(inp) / 8))
    assert fmt.nbytes == expected
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.to_state_dict().values())


def test_spqr_nbytes_3bit_beta16_no_outliers_is_3_625_bits_plus_counts_and_perm():
    p = random_parts(0, 64, 256, 16, 16, 3, 3, 0.0)
    fmt = SpQR.from_parts(**p)
    # 9 bits per row count (0..256), 8 bits per perm entry
    assert 8 * fmt.nbytes / fmt.numel == 3 + 6 / 16 + 64 / 256 + 9 * 64 / (64 * 256) + 8 * 256 / (64 * 256)


def test_spqr_meta_and_arrays_are_in_documented_order():
    fmt = SpQR.from_parts(**good_parts())
    assert fmt.meta() == {"shape": [4, 8], "bits": 3, "group_size": 4, "stat_bits": 3, "stat_group_size": 2}
    assert list(fmt.to_state_dict()) == ["codes", "scale_codes", "zero_codes", "scale_stats", "zero_stats",
                                         "outlier_counts", "outlier_col", "outlier_values", "perm"]
    assert get_format("spqr") is SpQR and SpQR.format_name == "spqr"


def test_spqr_codes_pack_unpacked_codes_row_major():
    fmt = SpQR.from_parts(**good_parts())
    assert torch.equal(pack_bits(fmt.unpacked_codes(), 3), fmt.codes)


# -- validation -----------------------------------------------------------------------------

def good_parts() -> dict:
    """[4, 8], 3-bit, β1=4, β2=2; outliers at (0, 1), (0, 5), (2, 3); step-1/minimum-0 stats."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, 1] = mask[0, 5] = mask[2, 3] = True
    values = torch.zeros(4, 8)
    values[0, 1], values[0, 5], values[2, 3] = 1.5, -2.0, 100.0
    stats = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)], dim=-1).half()
    return dict(codes=torch.randint(0, 8, (4, 8), generator=g).to(torch.uint8),
                scale_codes=torch.randint(0, 8, (4, 2), generator=g).to(torch.uint8),
                zero_codes=torch.randint(0, 8, (4, 2), generator=g).to(torch.uint8),
                scale_stats=stats, zero_stats=stats.clone(), outlier_mask=mask, outlier_values_dense=values,
                perm=torch.tensor([3, 0, 7, 1, 6, 2, 5, 4]), bits=3, group_size=4, stat_bits=3, stat_group_size=2)


def good_state() -> dict:
    return SpQR.from_parts(**good_parts()).to_state_dict()


def load(arrays, meta=None):
    meta = meta if meta is not None else SpQR.from_parts(**good_parts()).meta()
    return SpQR.from_state_dict(arrays, meta, where="f:w")


@pytest.mark.parametrize("name, dtype, expected", [
    ("codes", torch.int32, "torch.uint8"), ("scale_codes", torch.int8, "torch.uint8"),
    ("zero_codes", torch.int16, "torch.uint8"), ("scale_stats", torch.float32, "torch.float16"),
    ("zero_stats", torch.bfloat16, "torch.float16"), ("outlier_counts", torch.int32, "torch.uint8"),
    ("outlier_col", torch.int32, "torch.int16"), ("outlier_values", torch.float32, "torch.float16"),
    ("perm", torch.int16, "torch.uint8"),
])
def test_spqr_from_state_dict_wrong_dtype_raises(name, dtype, expected):
    arrays = good_state()
    arrays[name] = arrays[name].to(dtype)
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} has dtype {dtype}, expected one of [{expected}]")):
        load(arrays)


@pytest.mark.parametrize("name, cut, got, expected", [
    ("codes", slice(0, -1), [11], [12]), ("scale_codes", slice(0, -1), [2], [3]),
    ("zero_codes", slice(0, 2), [2], [3]), ("scale_stats", slice(0, 1), [1, 2, 2], [2, 2, 2]),
    ("zero_stats", slice(0, 1), [1, 2, 2], [2, 2, 2]), ("outlier_counts", slice(0, -1), [1], [2]),
    ("outlier_values", slice(0, -1), [2], [3]), ("perm", slice(0, -1), [2], [3]),
])
def test_spqr_from_state_dict_wrong_length_raises(name, cut, got, expected):
    arrays = good_state()
    arrays[name] = arrays[name][cut]
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} has shape {got}, expected {expected}")):
        load(arrays)


@pytest.mark.parametrize("perm", [[3, 0, 7, 1, 6, 2, 5, 3], [0] * 8, [7, 6, 5, 4, 3, 2, 1, 1]])
def test_spqr_from_state_dict_perm_not_permutation_raises(perm):
    arrays = {**good_state(), "perm": pack_bits(torch.tensor(perm), 3)}
    with pytest.raises(SparsaError, match=re.escape("f:w: perm is not a permutation of range(8)")):
        load(arrays)


@pytest.mark.parametrize("counts", [[2, 0, 1, 1], [2, 0, 0, 0], [0, 0, 0, 0], [3, 15, 0, 0]])
def test_spqr_from_state_dict_counts_not_summing_to_nnz_raises(counts):
    arrays = {**good_state(), "outlier_counts": pack_bits(torch.tensor(counts), 4)}
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: outlier_counts must be at most in=8 per row and sum to nnz=3")):
        load(arrays)


def test_spqr_from_state_dict_row_count_above_in_raises():
    arrays = {**good_state(), "outlier_counts": pack_bits(torch.tensor([9, 0, 0, 0]), 4),
              "outlier_col": torch.arange(9, dtype=torch.int16) % 8, "outlier_values": torch.ones(9).half()}
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: outlier_counts must be at most in=8 per row and sum to nnz=9")):
        load(arrays)


@pytest.mark.parametrize("col", [[1, 8, 3], [1, 5, -1]])
def test_spqr_from_state_dict_col_out_of_range_raises(col):
    arrays = {**good_state(), "outlier_col": torch.tensor(col, dtype=torch.int16)}
    with pytest.raises(SparsaError, match=re.escape("f:w: outlier_col holds a column outside [0, 8)")):
        load(arrays)


@pytest.mark.parametrize("col", [[5, 1, 3], [1, 1, 3]])
def test_spqr_from_state_dict_col_not_increasing_in_row_raises(col):
    arrays = {**good_state(), "outlier_col": torch.tensor(col, dtype=torch.int16)}
    with pytest.raises(SparsaError, match=re.escape("f:w: outlier_col is not strictly increasing within a row")):
        load(arrays)


def test_spqr_from_state_dict_col_decreasing_across_rows_is_accepted():
    arrays = {**good_state(), "outlier_col": torch.tensor([1, 5, 0], dtype=torch.int16)}
    assert load(arrays).to_dense()[2, 0].item() == 100.0


@pytest.mark.parametrize("stat_group_size", [3, 0, -2, 8, 2.0])
def test_spqr_from_state_dict_stat_group_size_not_dividing_out_raises(stat_group_size):
    meta = {**SpQR.from_parts(**good_parts()).meta(), "stat_group_size": stat_group_size}
    with pytest.raises(SparsaError, match=re.escape(
            f"f:w: out_features=4 % stat_group_size={stat_group_size} != 0; try stat_group_size=4")):
        load(good_state(), meta)


def test_spqr_from_state_dict_group_size_not_dividing_in_raises_with_hint():
    meta = {**SpQR.from_parts(**good_parts()).meta(), "group_size": 3}
    with pytest.raises(SparsaError, match=re.escape("f:w: in_features=8 % group_size=3 != 0; try --group-size 8")):
        load(good_state(), meta)


@pytest.mark.parametrize("key, value", [("bits", 1), ("bits", 9), ("stat_bits", 1), ("stat_bits", 9)])
def test_spqr_from_state_dict_bits_out_of_range_raises(key, value):
    meta = {**SpQR.from_parts(**good_parts()).meta(), key: value}
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {key}={value} outside 2..8")):
        load(good_state(), meta)


@pytest.mark.parametrize("name, index, bad", [
    ("scale_stats", (1, 0, 0), float("inf")), ("scale_stats", (0, 1, 1), float("nan")),
    ("zero_stats", (0, 0, 1), float("-inf")), ("outlier_values", (2,), float("nan")),
])
def test_spqr_from_state_dict_nonfinite_stats_or_outliers_raise(name, index, bad):
    arrays = good_state()
    arrays[name] = arrays[name].clone()
    arrays[name][index] = bad
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} holds inf/nan")):
        load(arrays)


def test_spqr_from_state_dict_missing_extra_arrays_and_meta_keys_raise():
    arrays = good_state()
    with pytest.raises(SparsaError, match=re.escape("f:w: missing arrays ['perm']")):
        load({k: v for k, v in arrays.items() if k != "perm"})
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['outlier_row']")):
        load({**arrays, "outlier_row": arrays["outlier_col"]})
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: spqr metadata has keys ['bits', 'group_size', 'shape'], "
            "expected ['bits', 'group_size', 'shape', 'stat_bits', 'stat_group_size']")):
        load(arrays, {"shape": [4, 8], "bits": 3, "group_size": 4})


@pytest.mark.parametrize("name, bad, message", [
    ("codes", 8, "w: codes holds a code outside [0, 8)"),
    ("scale_codes", 8, "w: scale_codes holds a code outside [0, 8)"),
    ("zero_codes", -1, "w: zero_codes holds a code outside [0, 8)"),
])
def test_spqr_from_parts_code_out_of_range_raises(name, bad, message):
    p = good_parts()
    p[name] = p[name].to(torch.int32)
    p[name][0, 0] = bad
    with pytest.raises(SparsaError, match=re.escape(message)):
        SpQR.from_parts(**p, where="w")


@pytest.mark.parametrize("perm", [[0, 1, 2, 3, 4, 5, 6, 2**16 + 7], [0, 1, 2, 3, 4, 5, 6, 6], [0, 1, 2]])
def test_spqr_from_parts_perm_not_permutation_raises(perm):
    p = {**good_parts(), "perm": torch.tensor(perm)}
    with pytest.raises(SparsaError, match=re.escape("w: perm is not a permutation of range(8)")):
        SpQR.from_parts(**p, where="w")


def test_spqr_from_parts_float_mask_raises():
    p = good_parts()
    p["outlier_mask"] = p["outlier_mask"].float()
    with pytest.raises(SparsaError, match=re.escape("w: outlier_mask must be bool, got torch.float32")):
        SpQR.from_parts(**p, where="w")


def test_spqr_from_parts_outlier_beyond_fp16_raises():
    p = good_parts()
    p["outlier_values_dense"][2, 3] = 1e6
    with pytest.raises(SparsaError, match=re.escape("w: outlier_values holds inf/nan")):
        SpQR.from_parts(**p, where="w")
