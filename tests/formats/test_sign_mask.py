"""Tests for sparsa.formats.sign_mask: the T-Switch ternary task vector (positions + signs + scale)."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import FORMATS, SignMask, get_format
from sparsa.formats.bitpack import pack_bits, packed_nbytes

FAST = settings(max_examples=50, deadline=None)
ENCODINGS = ["bitmap", "group", "index"]
T_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64]


@st.composite
def ternary_tensor(draw):
    """1-D to 4-D tensor (size-1 dims allowed) of values in {-1, 0, +1} at a random density."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    density = draw(st.sampled_from([0.0, 0.05, 0.4, 1.0]))
    dtype = draw(st.sampled_from(T_DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    keep = torch.rand(shape, generator=g) < density
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1)
    return (sign * keep).to(dtype)


SCALES = st.floats(width=32, allow_nan=False, allow_infinity=False)


def expected_dense(t: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.tensor([scale], dtype=torch.float32) * t.to(torch.float32)


def positions_nbytes(t: torch.Tensor, encoding: str, g: int) -> int:
    """Hand formula of each encoding's position bytes, computed in plain Python."""
    flags = [int(v != 0) for v in t.reshape(-1).tolist()]
    n = len(flags)
    pos = [i for i, f in enumerate(flags) if f]
    if encoding == "bitmap":
        return math.ceil(n / 8)
    if encoding == "group":
        groups = math.ceil(n / g)
        marked = sum(any(flags[k * g:(k + 1) * g]) for k in range(groups))
        return math.ceil(groups / 8) + math.ceil(g * marked / 8)
    gaps = [p - q - 1 for p, q in zip(pos, [-1] + pos[:-1])]
    bits = max(1, max(gaps, default=0).bit_length())
    return math.ceil(len(pos) * bits / 8)


# -- round trips ----------------------------------------------------------------------------

@FAST
@given(ternary_tensor(), SCALES, st.sampled_from(ENCODINGS + ["auto"]), st.integers(1, 9))
def test_sign_mask_from_ternary_any_tensor_roundtrips_exactly(t, scale, encoding, g):
    fmt = SignMask.from_ternary(t, scale, encoding=encoding, group_size=g)
    s = fmt.ternary()
    assert s.dtype == torch.int8 and s.shape == t.shape
    assert torch.equal(s, t.to(torch.int8))
    dense = fmt.to_dense()
    assert dense.dtype == torch.float32 and torch.equal(dense, expected_dense(t, scale))
    assert fmt.nnz == int((t != 0).sum()) and fmt.numel == t.numel()
    if encoding != "auto":
        assert fmt.encoding == encoding


@FAST
@given(ternary_tensor(), SCALES, st.sampled_from(ENCODINGS + ["auto"]), st.integers(1, 9), st.booleans())
def test_sign_mask_state_dict_roundtrip_is_bit_exact(t, scale, encoding, g, via_json):
    fmt = SignMask.from_ternary(t, scale, encoding=encoding, group_size=g)
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = SignMask.from_state_dict(fmt.to_state_dict(), meta, where="f:tau")
    assert back.meta() == fmt.meta()
    for name, array in fmt.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and torch.equal(got, array)
    assert torch.equal(back.ternary(), t.to(torch.int8))


@FAST
@given(ternary_tensor(), st.sampled_from(ENCODINGS), st.integers(1, 9))
def test_sign_mask_nbytes_any_tensor_matches_state_dict_and_formula(t, encoding, g):
    fmt = SignMask.from_ternary(t, 0.25, encoding=encoding, group_size=g)
    state = fmt.to_state_dict()
    assert fmt.nbytes == sum(v.numel() * v.element_size() for v in state.values())
    nnz = int((t != 0).sum())
    assert fmt.nbytes == positions_nbytes(t, encoding, g) + math.ceil(nnz / 8) + 4
    assert fmt.bits_per_param == 8 * fmt.nbytes / t.numel()


@FAST
@given(ternary_tensor(), st.integers(1, 9))
def test_sign_mask_auto_any_tensor_picks_fewest_bytes_first_in_order(t, g):
    sizes = [SignMask.from_ternary(t, 1.0, encoding=e, group_size=g).nbytes for e in ENCODINGS]
    auto = SignMask.from_ternary(t, 1.0, group_size=g)
    assert auto.encoding == ENCODINGS[sizes.index(min(sizes))]
    assert auto.nbytes == min(sizes)


@FAST
@given(ternary_tensor(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_sign_mask_to_dense_requested_dtype_casts(t, dtype):
    fmt = SignMask.from_ternary(t, 0.375)
    dense = fmt.to_dense(dtype)
    assert dense.dtype == dtype and torch.equal(dense, expected_dense(t, 0.375).to(dtype))


def test_sign_mask_from_dense_masked_tau_keeps_signs():
    tau = torch.tensor([[0.0, -0.3, 2.0], [0.0, 0.0, -1e-8]])
    fmt = SignMask.from_dense(tau, 0.5, encoding="group", group_size=2)
    assert fmt.ternary().tolist() == [[0, -1, 1], [0, 0, -1]]
    assert fmt.encoding == "group" and fmt.group_size == 2


def test_sign_mask_bool_and_noncontiguous_input_roundtrip():
    t = torch.tensor([[1, 0, -1], [0, 1, 1]], dtype=torch.float32)
    assert torch.equal(SignMask.from_ternary(t.t(), 1.0).ternary(), t.t().to(torch.int8))
    b = torch.tensor([True, False, True])
    assert SignMask.from_ternary(b, 1.0).ternary().tolist() == [1, 0, 1]


# -- exact sizes and layout -----------------------------------------------------------------

def small_example() -> torch.Tensor:
    """n = 16, g = 4: group 1 (entries 4..7) holds +1 at 5 and -1 at 6, everything else 0."""
    t = torch.zeros(16)
    t[5], t[6] = 1, -1
    return t


@pytest.mark.parametrize("encoding, positions, index_bits", [
    ("bitmap", [0b01100000, 0b00000000], 0),  # 16 presence bits
    ("group", [0b0010, 0b0110], 0),  # markers 0100 | occupancy of group 1: 0110
    ("index", [0b000101], 3),  # gaps [5, 0] in index_bits(6) = 3 bits each
])
def test_sign_mask_small_example_has_hand_computed_bytes(encoding, positions, index_bits):
    fmt = SignMask.from_ternary(small_example(), 0.5, encoding=encoding, group_size=4)
    assert fmt.positions.dtype == torch.uint8 and fmt.positions.tolist() == positions
    assert fmt.signs.tolist() == [0b10]  # +1 then -1
    assert fmt.scale.dtype == torch.float32 and fmt.scale.tolist() == [0.5]
    assert fmt.index_bits == index_bits and fmt.nnz == 2
    assert fmt.nbytes == len(positions) + 1 + 4
    assert fmt.meta() == {"shape": [16], "encoding": encoding, "nnz": 2, "group_size": 4, "index_bits": index_bits,
                          "magnitude_bits": 0}


def test_sign_mask_group_layout_matches_t_switch_disk_format():
    # shape [2, 7] -> n = 14, g = 3 -> 5 groups (the last holds 2 entries)
    t = torch.tensor([[0, 0, 0, 1, 0, -1, 0],
                      [0, 0, 0, 0, 0, -1, 1]])
    fmt = SignMask.from_ternary(t, 2.0, encoding="group", group_size=3)
    # flat groups: [0,0,0] [1,0,-1] [0,0,0] [0,0,0] [-1,1]+pad -> markers 0,1,0,0,1
    markers = pack_bits(torch.tensor([0, 1, 0, 0, 1]), 1)
    occupancy = pack_bits(torch.tensor([1, 0, 1, 1, 1, 0]), 1)  # groups 1 and 4, pad bit 0
    assert markers.tolist() == [0b10010] and occupancy.tolist() == [0b011101]  # LSB first
    assert fmt.positions.tolist() == [0b10010, 0b011101]
    assert torch.equal(fmt.positions, torch.cat([markers, occupancy]))
    assert fmt.signs.tolist() == [0b0110]  # signs of +1, -1, -1, +1 (1 = negative)
    assert fmt.nbytes == 2 + 1 + 4
    assert torch.equal(fmt.ternary(), t.to(torch.int8))


def test_sign_mask_group_two_byte_pieces_are_padded_separately():
    # 9 groups of 2 -> 2 marker bytes; 5 marked groups -> 10 occupancy bits -> 2 bytes
    t = torch.zeros(18)
    t[[0, 5, 6, 7, 10, 17]] = torch.tensor([1.0, -1, 1, 1, -1, 1])
    fmt = SignMask.from_ternary(t, 1.0, encoding="group", group_size=2)
    markers = [1, 0, 1, 1, 0, 1, 0, 0, 1]
    occupancy = [1, 0, 0, 1, 1, 1, 1, 0, 0, 1]
    assert fmt.positions.tolist() == pack_bits(torch.tensor(markers), 1).tolist() + \
        pack_bits(torch.tensor(occupancy), 1).tolist()
    assert fmt.positions.numel() == 4 and fmt.nbytes == 4 + 1 + 4


def test_sign_mask_all_zero_index_stores_no_positions():
    fmt = SignMask.from_ternary(torch.zeros(3, 5), 1.0, encoding="index")
    assert fmt.positions.numel() == 0 and fmt.signs.numel() == 0 and fmt.index_bits == 1
    assert fmt.nbytes == 4
    assert torch.equal(fmt.to_dense(), torch.zeros(3, 5))


def test_sign_mask_bits_per_param_counts_every_byte():
    fmt = SignMask.from_ternary(torch.ones(64), 1.0, encoding="bitmap")
    assert fmt.nbytes == 8 + 8 + 4 and fmt.bits_per_param == 8 * 20 / 64


# -- auto -----------------------------------------------------------------------------------

def test_sign_mask_auto_very_sparse_picks_index():
    t = torch.zeros(64, 64)
    t[3, 7], t[40, 1], t[63, 63] = 1, -1, 1
    fmt = SignMask.from_ternary(t, 1.0)
    assert fmt.encoding == "index" and fmt.positions.numel() == packed_nbytes(3, 12)


def test_sign_mask_auto_forty_percent_dense_picks_bitmap():
    g = torch.Generator().manual_seed(0)
    t = torch.sign(torch.randn(1000, generator=g)) * (torch.rand(1000, generator=g) < 0.4)
    assert SignMask.from_ternary(t, 1.0).encoding == "bitmap"


def test_sign_mask_auto_clustered_nonzeros_picks_group():
    # every 4th group of 4 fully set: group = 128 + 128 bytes, bitmap = 512, index = 1024 gaps * 4 bits = 512
    t = torch.zeros(1024, 4)
    t[::4] = 1
    fmt = SignMask.from_ternary(t.reshape(-1), 1.0, group_size=4)
    assert fmt.encoding == "group" and fmt.positions.numel() == 256


def test_sign_mask_auto_tie_prefers_bitmap_over_index():
    # all-nonzero 8 entries: bitmap 1 byte, group 1 + 1, index 8 gaps of 0 in 1 bit = 1 byte
    fmt = SignMask.from_ternary(torch.ones(8), 1.0, group_size=4)
    assert fmt.encoding == "bitmap" and fmt.positions.numel() == 1


# -- from_ternary errors --------------------------------------------------------------------

@pytest.mark.parametrize("bad, found", [(2.0, "2.0"), (0.5, "0.5"), (float("nan"), "nan")])
def test_sign_mask_from_ternary_non_ternary_value_raises(bad, found):
    t = torch.tensor([1.0, 0.0, bad, -1.0])
    with pytest.raises(SparsaError, match=re.escape(f"t: values must be in {{-1, 0, +1}}, found {found} (1 of 4")):
        SignMask.from_ternary(t, 1.0, where="t")


def test_sign_mask_from_ternary_uint8_255_raises():
    with pytest.raises(SparsaError, match=re.escape("found 255")):
        SignMask.from_ternary(torch.tensor([255, 1], dtype=torch.uint8), 1.0)


@pytest.mark.parametrize("kw, message", [
    ({"encoding": "csr"}, "encoding 'csr' is not one of auto, bitmap, group, index"),
    ({"group_size": 0}, "group_size 0 is not a positive integer"),
    ({"scale": float("inf")}, "scale inf is not a finite fp32 number"),
    ({"scale": 1e39}, "scale 1e+39 is not a finite fp32 number"),
])
def test_sign_mask_from_ternary_bad_argument_raises(kw, message):
    kw = {"scale": 1.0, **kw}
    with pytest.raises(SparsaError, match=re.escape(f"t: {message}")):
        SignMask.from_ternary(torch.ones(4), where="t", **kw)


def test_sign_mask_from_ternary_scalar_tensor_raises():
    with pytest.raises(SparsaError, match=re.escape("t: tensor shape [] is not one or more positive sizes")):
        SignMask.from_ternary(torch.tensor(1.0), 1.0, where="t")


# -- validation -----------------------------------------------------------------------------

def load(fmt: SignMask, arrays=None, **meta_changes) -> SignMask:
    arrays = {**fmt.to_state_dict(), **(arrays or {})}
    return SignMask.from_state_dict(arrays, {**fmt.meta(), **meta_changes}, where="f:tau")


def raises(message: str):
    return pytest.raises(SparsaError, match=re.escape(f"f:tau: {message}"))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sign_mask_from_state_dict_wrong_signs_length_raises(encoding):
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding=encoding)
    with raises("signs has shape [2], expected [1]"):
        load(fmt, {"signs": torch.zeros(2, dtype=torch.uint8)})


@pytest.mark.parametrize("encoding, expected", [("bitmap", "positions has shape [3], expected [2]"),
                                                ("group", "positions has 3 bytes, expected 2"),
                                                ("index", "positions has shape [3], expected [1]")])
def test_sign_mask_from_state_dict_wrong_positions_length_raises(encoding, expected):
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding=encoding)
    with raises(expected):
        load(fmt, {"positions": torch.cat([fmt.positions, torch.zeros(3 - fmt.positions.numel(), dtype=torch.uint8)])})


def test_sign_mask_from_state_dict_group_too_short_for_markers_raises():
    fmt = SignMask.from_ternary(torch.ones(40), 1.0, encoding="group", group_size=4)  # 10 groups -> 2 marker bytes
    with raises("positions has 1 bytes, fewer than the 2 marker bytes of 10 groups"):
        load(fmt, {"positions": fmt.positions[:1]})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_sign_mask_from_state_dict_scale_not_finite_raises(value):
    fmt = SignMask.from_ternary(small_example(), 1.0)
    with pytest.raises(SparsaError, match=r"^f:tau: scale (nan|inf) is not finite$"):
        load(fmt, {"scale": torch.tensor([value])})


def test_sign_mask_from_state_dict_scale_wrong_dtype_or_shape_raises():
    fmt = SignMask.from_ternary(small_example(), 1.0)
    with raises("scale has dtype torch.float16"):
        load(fmt, {"scale": torch.ones(1, dtype=torch.float16)})
    with raises("scale has shape [2], expected [1]"):
        load(fmt, {"scale": torch.ones(2)})


def test_sign_mask_from_state_dict_unknown_encoding_raises():
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding="bitmap")
    with raises("encoding 'rle' is not one of bitmap, group, index"):
        load(fmt, encoding="rle")


def test_sign_mask_from_state_dict_marked_group_without_occupancy_raises():
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding="group")  # positions [0b0010, 0b0110]
    with raises("group 1 is marked but has no occupancy bits set"):
        load(fmt, {"positions": torch.tensor([0b0010, 0b0000], dtype=torch.uint8)})


def test_sign_mask_from_state_dict_group_bits_past_numel_raises():
    fmt = SignMask.from_ternary(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]), 1.0, encoding="group")  # n = 5, 2 groups
    assert fmt.positions.tolist() == [0b10, 0b0001]
    with raises("occupancy bits set past the end of the tensor (numel 5)"):
        load(fmt, {"positions": torch.tensor([0b10, 0b0011], dtype=torch.uint8)})


def test_sign_mask_from_state_dict_index_positions_past_numel_raises():
    fmt = SignMask.from_ternary(torch.tensor([0.0, 0.0, 1.0, -1.0]), 1.0, encoding="index")  # gaps [2, 0] in 2 bits
    assert fmt.positions.tolist() == [0b0010] and fmt.index_bits == 2
    with raises("index positions reach 5, past numel 4"):
        load(fmt, {"positions": pack_bits(torch.tensor([2, 2]), 2)})


def test_sign_mask_from_state_dict_nnz_mismatch_raises():
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding="bitmap")
    with raises("positions marks 3 nonzeros but nnz is 2"):
        load(fmt, {"positions": torch.tensor([0b01100001, 0], dtype=torch.uint8)})
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding="group")
    with raises("positions marks 3 nonzeros but nnz is 2"):
        load(fmt, {"positions": torch.tensor([0b0010, 0b0111], dtype=torch.uint8)})


@pytest.mark.parametrize("encoding, arrays, message", [
    ("bitmap", {"signs": torch.tensor([0b110], dtype=torch.uint8)}, "signs has nonzero padding bits"),
    ("group", {"positions": torch.tensor([0b10010, 0b0110], dtype=torch.uint8)},
     "positions has nonzero padding bits after the group markers"),
    ("group", {"positions": torch.tensor([0b0010, 0b10110], dtype=torch.uint8)},
     "positions has nonzero padding bits after the occupancy"),
    ("index", {"positions": torch.tensor([0b1000101], dtype=torch.uint8)}, "positions has nonzero padding bits"),
])
def test_sign_mask_from_state_dict_padding_bits_set_raises(encoding, arrays, message):
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding=encoding)
    with raises(message):
        load(fmt, arrays)


def test_sign_mask_from_state_dict_bitmap_tail_bit_set_raises():
    fmt = SignMask.from_ternary(torch.tensor([1.0, 0.0, 0.0]), 1.0, encoding="bitmap")  # n = 3, 5 padding bits
    with raises("positions has nonzero padding bits"):
        load(fmt, {"positions": torch.tensor([0b1001], dtype=torch.uint8)})


@pytest.mark.parametrize("changes, message", [
    ({"shape": []}, "shape () is not one or more positive integers"),
    ({"shape": [4, 0]}, "shape (4, 0) is not one or more positive integers"),
    ({"group_size": 0}, "group_size 0 is not a positive integer"),
    ({"index_bits": 3}, "index_bits is 3, expected 0 for the bitmap encoding"),
    ({"nnz": 17}, "nnz 17 is not an integer in [0, 16]"),
    ({"nnz": -1}, "nnz -1 is not an integer in [0, 16]"),
])
def test_sign_mask_from_state_dict_bad_meta_raises(changes, message):
    with raises(message):
        load(SignMask.from_ternary(small_example(), 1.0, encoding="bitmap"), **changes)


@pytest.mark.parametrize("bits", [0, 33])
def test_sign_mask_from_state_dict_index_bits_out_of_range_raises(bits):
    with raises(f"index_bits {bits} is not an integer in [1, 32]"):
        load(SignMask.from_ternary(small_example(), 1.0, encoding="index"), index_bits=bits)


def test_sign_mask_from_state_dict_missing_meta_key_raises():
    meta = SignMask.from_ternary(small_example(), 1.0).meta()
    del meta["nnz"]
    with raises("sign_mask metadata has keys"):
        SignMask.from_state_dict(SignMask.from_ternary(small_example(), 1.0).to_state_dict(), meta, where="f:tau")


def test_sign_mask_from_state_dict_positions_wrong_dtype_raises():
    fmt = SignMask.from_ternary(small_example(), 1.0, encoding="group")
    with raises("positions must be 1-D uint8, got [2] torch.int16"):
        load(fmt, {"positions": fmt.positions.to(torch.int16)})


def test_sign_mask_registered_as_sign_mask():
    assert get_format("sign_mask") is SignMask and FORMATS["sign_mask"] is SignMask
    assert SignMask.format_name == "sign_mask"


# -- magnitude codes (FlexSwitch) ---------------------------------------------------------------

@st.composite
def coded_tensor(draw):
    """(ternary tensor, 2**m magnitudes, [nnz] codes) for m in 1..3."""
    t = draw(ternary_tensor())
    m = draw(st.integers(1, 3))
    levels = draw(st.lists(SCALES, min_size=1 << m, max_size=1 << m))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    codes = torch.randint(0, 1 << m, (int((t != 0).sum()),), generator=g)
    return t, levels, codes


def expected_coded(t: torch.Tensor, levels, codes: torch.Tensor) -> torch.Tensor:
    """``t * levels[code]`` entry by entry, in plain Python over the row-major nonzeros."""
    flat, out, i = t.reshape(-1).tolist(), [], 0
    for v in flat:
        if v:
            out.append(float(torch.tensor(v, dtype=torch.float32) * torch.tensor(levels[int(codes[i])],
                                                                                 dtype=torch.float32)))
            i += 1
        else:
            out.append(0.0)
    return torch.tensor(out, dtype=torch.float32).view(t.shape)


@FAST
@given(coded_tensor(), st.sampled_from(ENCODINGS + ["auto"]), st.integers(1, 9), st.booleans())
def test_sign_mask_with_codes_roundtrips_bit_exactly(case, encoding, g, via_json):
    t, levels, codes = case
    fmt = SignMask.from_ternary(t, levels, codes=codes, encoding=encoding, group_size=g)
    m = len(levels).bit_length() - 1
    assert fmt.magnitude_bits == m
    assert torch.equal(fmt.magnitude_codes(), codes)
    assert torch.equal(fmt.ternary(), t.to(torch.int8))
    assert torch.equal(fmt.to_dense(), expected_coded(t, levels, codes))
    nnz = int((t != 0).sum())
    assert fmt.nbytes == positions_nbytes(t, fmt.encoding, g) + math.ceil(nnz / 8) + math.ceil(nnz * m / 8) + 4 * 2**m
    meta = json.loads(json.dumps(fmt.meta())) if via_json else fmt.meta()
    back = SignMask.from_state_dict(fmt.to_state_dict(), meta, where="f:tau")
    for name, array in fmt.arrays().items():
        assert torch.equal(back.arrays()[name], array)
    assert torch.equal(back.to_dense(), fmt.to_dense())


def test_sign_mask_codes_small_example_is_hand_packed():
    t = torch.tensor([0, 1, 0, -1, 1, 0, 0, 0])
    fmt = SignMask.from_ternary(t, [0.5, 1.0, 2.0, 4.0], codes=torch.tensor([3, 0, 2]), encoding="bitmap")
    assert fmt.codes.tolist() == [0b100011]  # 3, 0, 2 in 2 bits each, first code in the low bits
    assert fmt.to_dense().tolist() == [0, 4.0, 0, -0.5, 2.0, 0, 0, 0]
    assert fmt.nbytes == 1 + 1 + 1 + 16


@pytest.mark.parametrize("kw, message", [
    ({"scale": [1.0, 2.0, 3.0]}, "scale holds 3 magnitudes, expected 2\\*\\*m"),
    ({"scale": [1.0, 2.0]}, "2 magnitudes need codes, one per nonzero"),
    ({"scale": [1.0, 2.0], "codes": torch.tensor([0, 1])}, "codes has 2 torch.int64 entries, expected 3"),
    ({"scale": [1.0, 2.0], "codes": torch.tensor([0, 2, 1])}, "codes must lie in \\[0, 2\\)"),
    ({"scale": [1.0, 2.0], "codes": torch.tensor([0.0, 1.0, 1.0])}, "expected 3 integers"),
    ({"scale": 1.0, "codes": torch.tensor([0, 1, 0])}, "codes given for a single magnitude"),
    ({"scale": [1.0, float("nan")], "codes": torch.tensor([0, 1, 0])}, "is not a finite fp32 number"),
])
def test_sign_mask_from_ternary_bad_codes_raise(kw, message):
    with pytest.raises(SparsaError, match=f"^tau: .*{message}"):
        SignMask.from_ternary(torch.tensor([1, 0, -1, 1]), where="tau", **kw)


def test_sign_mask_from_state_dict_codes_wrong_length_or_padding_raises():
    fmt = SignMask.from_ternary(torch.tensor([1, 0, -1, 1]), [1.0, 2.0], codes=torch.tensor([0, 1, 1]))
    arrays = fmt.to_state_dict()
    with pytest.raises(SparsaError, match=r"^f:tau: codes has shape \[2\], expected \[1\]$"):
        SignMask.from_state_dict({**arrays, "codes": torch.zeros(2, dtype=torch.uint8)}, fmt.meta(), where="f:tau")
    with pytest.raises(SparsaError, match=r"^f:tau: codes has nonzero padding bits$"):
        SignMask.from_state_dict({**arrays, "codes": torch.tensor([0xFF], dtype=torch.uint8)}, fmt.meta(),
                                 where="f:tau")
    with pytest.raises(SparsaError, match=r"^f:tau: scale has shape \[2\], expected \[4\]$"):
        SignMask.from_state_dict(arrays, {**fmt.meta(), "magnitude_bits": 2}, where="f:tau")
