"""The 16-row tile layout shared by the SpQR CPU kernel, and the per-weight layout cache."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.compress import SpQRConfig
from sparsa.compress.hessian import HessianAccumulator
from sparsa.compress.spqr import spqr_solve
from sparsa.formats import Quant
from sparsa.kernels import linear_reference
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.cpu.spqr import spqr_layout, spqr_linear, takes_q8
from sparsa.kernels.cpu.spqr_q8 import q8_reference
from sparsa.kernels.cpu import tiles
from sparsa.kernels.cpu.tiles import LANES, tile_codes


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 9), st.booleans(), st.integers(0, 2**16))
def test_tile_codes_put_every_code_where_the_kernel_reads_it(out, groups, group_size, nibbles, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16 if nibbles else 256, (out, groups * group_size), generator=g)
    flat = tile_codes(q, group_size, nibbles)
    steps = -(-group_size // 2) if nibbles else group_size
    tiles = -(-out // LANES)
    assert flat.dtype == torch.uint8 and flat.numel() == tiles * groups * steps * LANES
    t = flat.view(tiles, groups, steps, LANES).long()
    for r in range(out):
        for c in range(groups * group_size):
            grp, k = divmod(c, group_size)
            byte = t[r // LANES, grp, k // 2 if nibbles else k, r % LANES]
            got = (byte >> 4 * (k % 2)) & 15 if nibbles else byte
            assert int(got) == int(q[r, c])
    padding = t.permute(0, 3, 1, 2).reshape(tiles * LANES, -1)[out:]
    assert int(padding.abs().sum()) == 0


def solved(out=32, inp=48, seed=0):
    torch.manual_seed(seed)
    W, X = torch.randn(out, inp), torch.randn(200, inp)
    acc = HessianAccumulator(inp)
    acc.add(X)
    return spqr_solve(W, acc.H, SpQRConfig(bits=3, stat_group_size=16, outlier_threshold=0.1), where="t")[0]


def test_layout_is_built_once_and_rebuilt_after_an_in_place_change():
    fmt, x = solved(), torch.randn(3, 48)
    first = cached_layout(fmt, spqr_layout)
    assert cached_layout(fmt, spqr_layout) is first
    fmt.codes.copy_(torch.roll(fmt.codes, 1))  # e.g. load_state_dict copying new weights into the buffers
    assert cached_layout(fmt, spqr_layout) is not first
    expected = q8_reference(x, fmt) if takes_q8(fmt, 3) else linear_reference(x, fmt)  # the rebuilt codes' arithmetic
    torch.testing.assert_close(spqr_linear(x, fmt), expected, rtol=1e-4, atol=1e-4)


def test_sparse_linear_keeps_one_format_object_until_a_buffer_is_replaced():
    from sparsa.nn import SparseLinear

    module = SparseLinear(solved())
    fmt = module.weight_format
    assert module.weight_format is fmt
    module.codes = module.codes.clone()
    assert module.weight_format is not fmt and module.weight_format.codes is module.codes


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**16))
def test_vnni3_codes_put_every_code_where_the_kernel_reads_it(out, pairs, seed):
    from sparsa.kernels.cpu.tiles import vnni3_codes

    q = torch.randint(0, 8, (out, 32 * pairs), generator=torch.Generator().manual_seed(seed))
    tiles = -(-out // LANES)
    words = vnni3_codes(q).view(tiles, pairs, 3, LANES, 4).long()  # [tile, pair, word, row, byte]
    for r in range(out):
        for c in range(32 * pairs):
            pair, column = divmod(c, 32)
            word = words[r // LANES, pair, :, r % LANES]  # [word, byte]
            if column < 24:  # a nibble of word column // 8: byte column % 4, the high one for columns 4-7 of the 8
                w, rest = divmod(column, 8)
                code = (word[w, rest % 4] >> 4 * (rest // 4)) & 7
            else:  # bit w of the code is bit 3 (columns 24-27) or 7 (28-31) of word w's byte column % 4
                bit = 3 if column < 28 else 7
                code = sum(((word[w, column % 4] >> bit) & 1) << w for w in range(3))
            assert int(code) == int(q[r, c])


@pytest.mark.parametrize("avx512", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 40), st.sampled_from([0.0, 0.05, 0.3, 1.0]), st.integers(0, 2**16))
def test_outlier_slots_and_expand_add_every_entry_to_its_row(avx512, index_dtype, out, density, seed):
    """Every tile's compact slots, expanded and gathered (:func:`tiles.outlier_expand`), add
    ``delta * x[pos]`` of each CSR entry to its row's lane: the dense product, for any row counts, on
    both gather paths (``vgatherdps`` on AVX-512, LLVM's generic masked gather elsewhere; the first
    only where the CPU has it: the instruction would abort the process)."""
    if avx512 and not tiles.HAS_AVX512:
        pytest.skip("this CPU lacks AVX-512")
    before = tiles.HAS_AVX512
    tiles.HAS_AVX512 = avx512  # read when the intrinsic compiles, for the fresh function below
    g = torch.Generator().manual_seed(seed)
    inp = 37
    dense = torch.where(torch.rand(out, inp, generator=g) < density, torch.randn(out, inp, generator=g), 0.0)
    rows, pos = dense.nonzero(as_tuple=True)
    slots, masks, starts, pos_s, delta_s = tiles.outlier_slots(rows, (dense != 0).sum(1), pos.to(index_dtype),
                                                               dense[rows, pos], out)
    assert masks.dtype == torch.int16 and pos_s.numel() == rows.numel()
    assert int(masks.int().bitwise_and(0xFFFF).apply_(lambda m: bin(m).count("1")).sum()) == rows.numel()
    x = torch.randn(5 + inp, generator=g)

    @numba.njit
    def expand_all(acc, slots, masks, starts, pos, delta, x):
        for t in range(slots.shape[0] - 1):
            tiles.outlier_expand(acc, LANES * t, masks, slots[t], slots[t + 1], starts[t], pos, delta, x, 5)

    acc = np.zeros(-(-out // LANES) * LANES, np.float32)
    try:
        expand_all(acc, slots.numpy(), masks.numpy(), starts.numpy(), pos_s.numpy(), delta_s.numpy(), x.numpy())
    finally:
        tiles.HAS_AVX512 = before
    np.testing.assert_allclose(acc[:out], (dense @ x[5:]).numpy(), rtol=1e-5, atol=1e-5)
    assert not acc[out:].any()


def test_cached_layout_keeps_one_layout_per_builder():
    """A weight that prefills on one kernel and decodes on another keeps both layouts: alternating
    builders must not rebuild (the Quant prefill rebuilt its tiles every prompt when they replaced each other)."""
    fmt = Quant.from_dense(torch.randn(20, 64), bits=4, group_size=32)
    calls = []

    def counted(name):
        def build(weight):
            calls.append(name)
            return name, weight.shape
        return build

    tiles, quads = counted("tiles"), counted("quads")
    assert [cached_layout(fmt, b)[0] for b in (tiles, quads, tiles, quads)] == ["tiles", "quads"] * 2
    assert calls == ["tiles", "quads"]
