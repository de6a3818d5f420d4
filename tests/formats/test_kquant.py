"""KQuant: ggml's k-quant bytes, decoded exactly as the ``gguf`` package decodes them, packed and
unpacked without loss, and fitted round-to-nearest."""

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.kquant import K_TYPES, SUPER, KQuant, fit_grid, pack, unpack

KINDS = sorted(K_TYPES)


def random_fields(kind: str, n: int, seed: int):
    t = K_TYPES[kind]
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, generator=g) * 0.01).half()
    q = torch.randint(0, 2**t.bits, (n, SUPER), generator=g)
    if t.minimums:
        dmin = (torch.rand(n, generator=g) * 0.01).half()
        return d, dmin, torch.randint(0, 64, (n, t.subs), generator=g), torch.randint(0, 64, (n, t.subs), generator=g), q
    return d, None, torch.randint(-128, 128, (n, t.subs), generator=g), None, q


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), rows=st.integers(1, 4), supers=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip_and_gguf_decodes_to_our_dense(kind, rows, supers, seed):
    fields = random_fields(kind, rows * supers, seed)
    fmt = KQuant.from_fields(kind, (rows, supers * SUPER), *fields)
    fmt.validate("w")
    assert fmt.nbytes == rows * supers * K_TYPES[kind].block_bytes
    for got, want in zip(unpack(kind, fmt.blocks.reshape(-1, K_TYPES[kind].block_bytes)), fields):
        assert (got is None and want is None) or torch.equal(got.long() if got.dtype != torch.float16 else got,
                                                             want.long() if want.dtype != torch.float16 else want)
    theirs = gguf.quants.dequantize(fmt.blocks.numpy(), gguf.GGMLQuantizationType[kind.upper()])
    assert np.array_equal(theirs, fmt.to_dense().numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_rtn_fit_is_close_and_packs_to_what_it_decodes(kind):
    W = torch.randn(8, 512, generator=torch.Generator().manual_seed(0)) * 0.05
    fmt = KQuant.from_dense(W, kind=kind)
    err = float(((fmt.to_dense() - W) ** 2).mean() / (W**2).mean())
    bound = {"q4_k": 0.02, "q5_k": 0.005, "q6_k": 0.0015}[kind]  # about 4**-bits of the variance, with room
    assert err < bound, err
    assert np.array_equal(gguf.quants.dequantize(fmt.blocks.numpy(), gguf.GGMLQuantizationType[kind.upper()]),
                          fmt.to_dense().numpy())


def test_rows_not_whole_super_blocks_are_refused():
    with pytest.raises(SparsaError, match="q4_k needs rows of a multiple of 256 weights; this weight has 576"):
        KQuant.from_dense(torch.randn(4, 576), kind="q4_k", where="w")


def test_validate_names_a_bad_array():
    fmt = KQuant.from_dense(torch.randn(2, 256), kind="q6_k")
    with pytest.raises(SparsaError, match=r"w: blocks has shape \[2, 209\]"):
        KQuant(shape=(2, 256), kind="q6_k", blocks=fmt.blocks[:, :209]).validate("w")


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_through_the_registry_is_bit_exact(kind):
    import json

    from sparsa.formats import get_format

    fmt = KQuant.from_dense(torch.randn(3, 512, generator=torch.Generator().manual_seed(1)), kind=kind)
    meta = json.loads(json.dumps(fmt.meta()))
    assert meta == {"shape": [3, 512], "kind": kind}
    back = get_format("kquant").from_state_dict(fmt.to_state_dict(), meta, where="w")
    assert torch.equal(back.blocks, fmt.blocks) and back.nbytes == fmt.nbytes == 3 * 2 * K_TYPES[kind].block_bytes


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_searched_super_scale_is_never_worse_than_max_over_top(seed):
    from sparsa.formats.kquant import super_scale

    g = torch.Generator().manual_seed(seed)
    values = torch.rand(8, 8, generator=g) ** 2 * 0.01
    weight = torch.rand(8, 8, generator=g) * 10

    def error(d):
        q = (values / d.float()[:, None]).round().clamp(0, 63)
        return (weight * (values - d.float()[:, None] * q) ** 2).sum(-1)

    d = super_scale(values, weight, 63)
    assert d.dtype == torch.float16 and bool((error(d) <= error((values.amax(1) / 63).half())).all())


def test_fit_grid_with_sub_weights_lowers_the_error_of_the_6_bit_rounding():
    # weights on 4-bit min-max grids of 32 (as Q4_1 stores them): only the 6-bit rounding costs
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (16, 8, 32), generator=g).float()
    codes[..., 0], codes[..., 1] = 0, 15
    Wg = codes * torch.rand(16, 8, 1, generator=g) * 0.01 - torch.rand(16, 8, 1, generator=g) * 0.08
    W = Wg.reshape(16, 256)
    low = Wg.amin(-1).clamp(max=0)
    s = (Wg.amax(-1) - low) / 15
    errors = []
    for sub_weight in (None, ((((Wg - low[..., None]) / s[..., None]) ** 2).sum(-1), torch.full_like(s, 32.0))):
        *_, scale, minimum = fit_grid("q4_k", W, (s, low), sub_weight)
        codes = ((Wg - minimum[..., None]) / scale[..., None]).round().clamp(0, 15)
        errors.append(((codes * scale[..., None] + minimum[..., None] - Wg) ** 2).sum())
    assert errors[1] < errors[0]
