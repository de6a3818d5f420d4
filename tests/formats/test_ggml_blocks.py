"""ggml block bytes of a Quant: the ``gguf`` package's dequantizer reads them as exactly the values of
``to_dense()``, ggml's own bytes come back unchanged, and what no ggml type holds is refused."""

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.ggml import BLOCK_TYPES, block_type_of, from_blocks, to_blocks
from sparsa.formats.quant import Quant

TYPES = sorted(BLOCK_TYPES)


def random_quant(type_name: str, rows: int, blocks: int, seed: int) -> Quant:
    t = BLOCK_TYPES[type_name]
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**t.bits, (rows, blocks * 32), generator=g, dtype=torch.int64).to(torch.uint8)
    scale = (torch.randn(rows, blocks, generator=g) * 0.05).half()
    minimum = None if t.symmetric else (torch.randn(rows, blocks, generator=g) * 0.1).half()
    return Quant(shape=(rows, blocks * 32), bits=t.bits, group_size=32, codes=pack_bits(codes, t.bits),
                 scale=scale, minimum=minimum, symmetric=t.symmetric)


def ggml_type(name: str):
    return gguf.GGMLQuantizationType[name.upper()]


@settings(max_examples=30, deadline=None)
@given(type_name=st.sampled_from(TYPES), rows=st.integers(1, 5), blocks=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_gguf_dequantizes_our_blocks_to_our_dense_bit_for_bit(type_name, rows, blocks, seed):
    fmt = random_quant(type_name, rows, blocks, seed)
    data = to_blocks(fmt)
    assert data.shape == (rows, blocks * BLOCK_TYPES[type_name].block_bytes) and data.dtype == np.uint8
    assert data.nbytes == fmt.nbytes  # the format's bytes are the GGUF tensor's bytes
    theirs = gguf.quants.dequantize(data, ggml_type(type_name))
    assert np.array_equal(theirs, fmt.to_dense().numpy())  # every value exactly (a code at the centre: 0 or -0)
    back = from_blocks(type_name, data, fmt.shape)
    for name, array in fmt.arrays().items():
        assert torch.equal(getattr(back, name), array), name


@pytest.mark.parametrize("type_name", TYPES)
def test_ggml_quantized_bytes_round_trip_unchanged(type_name):
    w = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    data = gguf.quants.quantize(w, ggml_type(type_name))
    fmt = from_blocks(type_name, data, (6, 96))
    assert np.array_equal(to_blocks(fmt), data)
    assert np.array_equal(fmt.to_dense().numpy(), gguf.quants.dequantize(data, ggml_type(type_name)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=4, group_size=64, symmetric=True), "bits 4, group size 64"),
    (dict(bits=3, group_size=32, symmetric=False), "bits 3"),
    (dict(bits=8, group_size=32, symmetric=False), "bits 8, group size 32, with minimum"),
])
def test_a_quant_no_ggml_type_holds_is_refused_naming_it(kwargs, match):
    fmt = Quant.from_dense(torch.randn(4, 64), **kwargs)
    with pytest.raises(SparsaError, match=f"blk.0.attn_q: Quant {match}.*has no ggml block type"):
        block_type_of(fmt, "blk.0.attn_q")


def test_from_blocks_rejects_wrong_sizes_and_types():
    with pytest.raises(SparsaError, match="takes 36"):
        from_blocks("q4_0", np.zeros(35, np.uint8), (2, 32))
    with pytest.raises(SparsaError, match="need one of"):
        from_blocks("q3_k", np.zeros(36, np.uint8), (2, 32))
    with pytest.raises(SparsaError, match="multiple of 32"):
        from_blocks("q4_0", np.zeros(36, np.uint8), (2, 33))
