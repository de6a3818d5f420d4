"""The numba fp32 block-sparse kernel against the reference (decode + F.linear)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import BlockSparse
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu.block_sparse import block_sparse_linear, token_lanes_min

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5)}


@st.composite
def block_case(draw):
    """A random BSR weight (some block rows empty), activations with 0..24 tokens, maybe a bias."""
    r, c = draw(st.sampled_from([(1, 16), (16, 1), (32, 1), (4, 1), (1, 1), (1, 3), (2, 3), (8, 8), (2, 16), (1, 32)]))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols, generator=g) < density
    mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    W = torch.randn(rows * r, cols * c, generator=g) * mask
    tokens = draw(st.integers(0, 24))
    x = torch.randn(tokens, cols * c, generator=g)
    bias = torch.randn(rows * r, generator=g) if draw(st.booleans()) else None
    return BlockSparse.from_dense(W, block=(r, c)), x, bias


@settings(max_examples=60, deadline=None)
@given(block_case())
def test_block_sparse_linear_random_blocks_match_reference(case):
    fmt, x, bias = case
    y = block_sparse_linear(x, fmt, bias)
    assert y.shape == (x.shape[0], fmt.shape[0]) and y.dtype == torch.float32 and y.is_contiguous()
    torch.testing.assert_close(y, linear_reference(x, fmt, bias), **TOL[torch.float32])


@pytest.mark.parametrize("offset", [-1000, -1, 0, 33])  # one token, the last count of each order, one past
@pytest.mark.parametrize("block", [(1, 16), (16, 1), (4, 1)], ids=str)
def test_block_sparse_linear_both_loop_orders_match_reference(offset, block):
    tokens = max(1, token_lanes_min(block[1]) + offset)
    g = torch.Generator().manual_seed(tokens)
    keep = torch.rand(64 // block[0], 48 // block[1], generator=g) < 0.2
    keep[1] = False  # an empty block row
    W = torch.randn(64, 48, generator=g) * keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    fmt = BlockSparse.from_dense(W, block=block)
    x = torch.randn(tokens, 48, generator=g)
    y = block_sparse_linear(x, fmt)
    torch.testing.assert_close(y, x @ W.T, **TOL[torch.float32])
    assert torch.equal(y[:, block[0]:2 * block[0]], torch.zeros(tokens, block[0]))  # the empty block row


@pytest.mark.parametrize("offset", [0, 12, 13, 36])
@pytest.mark.parametrize("block", [(1, 16), (1, 5), (16, 1), (32, 1)], ids=str)
def test_block_sparse_register_steps_match_reference_on_ragged_tiles(offset, block):
    """The tokens-in-lanes order: row blocks over 37 rows (a last tile of 5 rows), column blocks of
    16 and 32 rows; token counts that end on, just past and inside a 16-token chunk; empty block
    rows; a bias."""
    r, c = block
    tokens = token_lanes_min(c) + offset
    rows = 37 if r == 1 else 96
    g = torch.Generator().manual_seed(tokens * 100 + r)
    keep = torch.rand(rows // r, 80 // c, generator=g) < 0.3
    keep[::7] = False
    W = torch.randn(rows, 80 // c * c, generator=g) * keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    fmt = BlockSparse.from_dense(W, block=block)
    x, bias = torch.randn(tokens, W.shape[1], generator=g), torch.randn(rows, generator=g)
    torch.testing.assert_close(block_sparse_linear(x, fmt, bias), x @ W.T + bias, **TOL[torch.float32])


@pytest.mark.parametrize("block", [(1, 16), (1, 32), (2, 16)], ids=str)
def test_block_sparse_token_rows_match_reference_for_every_token_group(block):
    """The weights-in-lanes order for widths of a multiple of 16: every token count below the
    tokens-in-lanes order's (groups of 8, 4, 2 and 1), block rows of 0 to all blocks (counts
    that do and do not fill the one-token step's partial sums)."""
    r, c = block
    g = torch.Generator().manual_seed(r * 100 + c)
    keep = torch.rand(40, 9, generator=g) < 0.5
    keep[0], keep[1] = False, True
    W = torch.randn(40 * r, 9 * c, generator=g) * keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    fmt = BlockSparse.from_dense(W, block=block)
    for tokens in range(1, token_lanes_min(c)):
        x = torch.randn(tokens, W.shape[1], generator=g)
        torch.testing.assert_close(block_sparse_linear(x, fmt), x @ W.T, **TOL[torch.float32])


def test_block_sparse_linear_leading_dims_and_strided_input_match_reference():
    W = torch.randn(32, 16)
    W[8:16] = 0
    fmt = BlockSparse.from_dense(W, block=(4, 1))
    x = torch.randn(16, 3, 5).transpose(0, 2)  # [5, 3, 16], not contiguous
    torch.testing.assert_close(block_sparse_linear(x, fmt), x @ W.T, **TOL[torch.float32])


def test_block_sparse_linear_all_empty_weight_gives_bias():
    fmt = BlockSparse.from_dense(torch.zeros(8, 32), block=(1, 16))
    bias = torch.arange(8.0)
    assert torch.equal(block_sparse_linear(torch.randn(10, 32), fmt, bias), bias.expand(10, 8))


def test_linear_dispatch_fp32_block_on_cpu_runs_the_numba_kernel():
    fmt = BlockSparse.from_dense(torch.randn(16, 16), block=(1, 16))
    assert select_linear_kernel(fmt, torch.zeros(1, 16)) is block_sparse_linear
    x = torch.randn(9, 16)
    torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), **TOL[torch.float32])


def test_block_sparse_linear_wrong_input_width_raises():
    fmt = BlockSparse.from_dense(torch.randn(16, 16), block=(1, 16))
    with pytest.raises(SparsaError, match=r"activations \[\.\.\., 8\] do not match a 16x16 weight"):
        block_sparse_linear(torch.randn(2, 8), fmt)


def test_block_sparse_linear_wrong_activation_dtype_raises():
    fmt = BlockSparse.from_dense(torch.randn(16, 16), block=(1, 16))
    with pytest.raises(SparsaError, match="the block CPU kernel takes torch.float32 activations, got torch.float64"):
        block_sparse_linear(torch.randn(2, 16, dtype=torch.float64), fmt)


def test_block_sparse_linear_bf16_values_raise():
    fmt = BlockSparse.from_dense(torch.randn(16, 16).bfloat16(), block=(1, 16))
    with pytest.raises(SparsaError, match="needs fp32 block values, got torch.bfloat16"):
        block_sparse_linear(torch.randn(2, 16), fmt)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 70), st.integers(1, 40), st.integers(0, 2**16))
def test_load_chunk_transposes_and_zero_pads(n_tokens, in_features, seed):
    from sparsa.kernels.cpu.block_sparse import LANES, load_chunk

    x = torch.randn(n_tokens, in_features, generator=torch.Generator().manual_seed(seed))
    padded = torch.cat([x, x.new_zeros(LANES, in_features)])
    for n0 in range(0, n_tokens, LANES):
        xc, pad = torch.full((in_features, LANES), float("nan")), torch.full((LANES, in_features), float("nan"))
        load_chunk(x.numpy(), n0, xc.numpy(), pad.numpy())
        assert torch.equal(xc, padded[n0:n0 + LANES].t())
