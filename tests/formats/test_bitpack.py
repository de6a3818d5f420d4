"""Tests for sparsa.formats.bitpack: LSB-first dense bit packing of small codes."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsa.formats.bitpack import MAX_PACK_BITS, index_bits, pack_bits, packed_nbytes, unpack_bits

FAST = settings(max_examples=50, deadline=None)


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """Pure-Python packing: code i occupies bits [i*bits, (i+1)*bits) of a little-endian integer."""
    stream = 0
    for i, code in enumerate(codes):
        stream |= code << (i * bits)
    nbytes = (len(codes) * bits + 7) // 8
    return list(stream.to_bytes(nbytes, "little"))


def code_dtype(bits: int) -> torch.dtype:
    """What unpack_bits returns: uint8 up to 8 bits, int64 beyond."""
    return torch.uint8 if bits <= 8 else torch.int64


@st.composite
def codes_and_bits(draw, max_len=100):
    bits = draw(st.integers(1, MAX_PACK_BITS))
    codes = draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=max_len))
    return codes, bits


@FAST
@given(codes_and_bits())
def test_pack_bits_any_width_roundtrips_exactly(case):
    codes, bits = case
    t = torch.tensor(codes, dtype=code_dtype(bits))
    packed = pack_bits(t, bits)
    assert packed.dtype == torch.uint8
    back = unpack_bits(packed, bits, len(codes))
    assert back.dtype == t.dtype and torch.equal(back, t)


@FAST
@given(codes_and_bits())
def test_pack_bits_any_width_has_packed_nbytes_length(case):
    codes, bits = case
    packed = pack_bits(torch.tensor(codes, dtype=code_dtype(bits)), bits)
    assert packed.shape == (packed_nbytes(len(codes), bits),)
    assert packed.numel() == -(-len(codes) * bits // 8)


@FAST
@given(codes_and_bits())
def test_pack_bits_any_width_matches_lsb_first_layout(case):
    codes, bits = case
    packed = pack_bits(torch.tensor(codes, dtype=code_dtype(bits)), bits)
    assert packed.tolist() == reference_pack(codes, bits)


@FAST
@given(codes_and_bits(max_len=40), st.sampled_from([torch.int16, torch.int32, torch.int64]))
def test_pack_bits_wider_integer_input_packs_like_its_code_dtype(case, dtype):
    codes, bits = case
    assume(max(codes, default=0) <= torch.iinfo(dtype).max)
    assert torch.equal(pack_bits(torch.tensor(codes, dtype=dtype), bits),
                       pack_bits(torch.tensor(codes, dtype=code_dtype(bits)), bits))


@pytest.mark.parametrize("n, bits, expected", [
    (0, 1, 0), (0, 8, 0), (1, 1, 1), (8, 1, 1), (9, 1, 2), (3, 3, 2), (8, 3, 3), (5, 7, 5), (7, 8, 7),
])
def test_packed_nbytes_known_sizes_match_ceil_formula(n, bits, expected):
    assert packed_nbytes(n, bits) == expected


def test_pack_bits_known_codes_give_known_bytes():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [1, 1]
    assert pack_bits(torch.tensor([3, 1]), 2).tolist() == [7]
    assert pack_bits(torch.tensor([5, 2, 7]), 3).tolist() == [213, 1]  # 5 | 2<<3 | 7<<6 = 469
    assert pack_bits(torch.tensor([255, 0, 17]), 8).tolist() == [255, 0, 17]
    assert pack_bits(torch.tensor([1000, 575]), 10).tolist() == [232, 255, 8]  # 1000 | 575<<10
    assert unpack_bits(torch.tensor([232, 255, 8], dtype=torch.uint8), 10, 2).tolist() == [1000, 575]


def test_pack_bits_partial_last_byte_is_zero_padded():
    assert pack_bits(torch.ones(3, dtype=torch.uint8), 1).tolist() == [7]
    assert pack_bits(torch.full((3,), 7, dtype=torch.uint8), 3).tolist() == [255, 1]


def test_pack_bits_matrix_input_packs_row_major():
    codes = torch.tensor([[1, 2, 3], [0, 3, 1]], dtype=torch.uint8)
    assert torch.equal(pack_bits(codes, 2), pack_bits(codes.reshape(-1), 2))
    assert torch.equal(unpack_bits(pack_bits(codes, 2), 2, 6).view(2, 3), codes)


def test_pack_bits_empty_input_gives_empty_uint8():
    for bits in range(1, MAX_PACK_BITS + 1):
        packed = pack_bits(torch.zeros(0, dtype=torch.uint8), bits)
        assert packed.dtype == torch.uint8 and packed.numel() == 0
        assert unpack_bits(packed, bits, 0).numel() == 0


def test_pack_bits_eight_bits_returns_a_copy():
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    packed = pack_bits(codes, 8)
    packed[0] = 99
    assert codes.tolist() == [1, 2, 3]
    unpacked = unpack_bits(packed, 8, 3)
    unpacked[0] = 42
    assert packed[0] == 99


def test_unpack_bits_longer_stream_returns_only_n_codes():
    packed = pack_bits(torch.tensor([1, 2, 3, 0, 1], dtype=torch.uint8), 2)
    assert unpack_bits(packed, 2, 3).tolist() == [1, 2, 3]


@pytest.mark.parametrize("n, bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (576, 10), (577, 10), (1536, 11),
                                     (2**15, 15), (2**15 + 1, 16), (2**20 + 1, 21)])
def test_index_bits_known_ranges_give_ceil_log2(n, bits):
    assert index_bits(n) == bits
    assert 2**index_bits(n) >= n and (n <= 2 or 2 ** (index_bits(n) - 1) < n)
