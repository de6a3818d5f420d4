"""The VNNI int8 4x1 kernel against its integer twin and the fp32 reference; its group layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import BlockSparse, BlockSparseInt8
from sparsa.kernels import linear_reference, select_linear_kernel
from sparsa.kernels.cpu.block_int8 import block_int8_linear, int8_layout, quantize_chunks
from sparsa.kernels.reference import int8_linear_reference, quantize_tokens
from sparsa.kernels.cpu.vnni import HAS_VNNI

pytestmark = pytest.mark.skipif(not HAS_VNNI, reason="this CPU lacks AVX-512 VNNI")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5)}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.sampled_from([0.0, 0.2, 0.7, 1.0]), st.integers(0, 2**16))
def test_int8_layout_groups_rebuild_the_codes_and_row_offsets(block_rows, in_features, density, seed):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(block_rows, in_features, generator=g) < density
    W = torch.randn(4 * block_rows, in_features, generator=g) * keep.repeat_interleave(4, 0)
    fmt = BlockSparseInt8.from_dense(W, block=(4, 1))
    layout = int8_layout(fmt)
    codes = layout.group_codes.view(torch.int8).view(-1, 4, 4)  # [group, row, column slot]
    rebuilt = torch.zeros(fmt.shape, dtype=torch.int64)
    for br in range(block_rows):
        for grp in range(int(layout.group_ptr[br]), int(layout.group_ptr[br + 1])):
            for t in range(4):  # padding slots hold zero codes, so adding them changes nothing
                rebuilt[4 * br:4 * br + 4, int(layout.group_col[4 * grp + t])] += codes[grp, :, t].long()
    dense_codes = BlockSparse.to_dense(fmt, torch.int64)
    assert torch.equal(rebuilt, dense_codes)
    assert torch.equal(layout.offset.long(), 128 * dense_codes.sum(1))
    assert layout.group_ptr.diff().tolist() == [-(-int(n) // 4) for n in fmt.crow.diff()]


@pytest.mark.parametrize("tokens", [1, 16, 17, 64, 65, 130])
@pytest.mark.parametrize("out_features", [36, 64])
def test_block_int8_linear_chunks_and_ragged_tiles_equal_integer_twin(tokens, out_features):
    """Chunks of 16..64 tokens with ragged ends, a last tile of 4 rows (36), empty block rows."""
    g = torch.Generator().manual_seed(tokens + out_features)
    keep = torch.rand(out_features // 4, 50, generator=g) < 0.25
    keep[::3] = False
    W = torch.randn(out_features, 50, generator=g) * keep.repeat_interleave(4, 0)
    fmt = BlockSparseInt8.from_dense(W, block=(4, 1))
    x, bias = torch.randn(tokens, 50, generator=g), torch.randn(out_features, generator=g)
    torch.testing.assert_close(block_int8_linear(x, fmt, bias), int8_linear_reference(x, fmt, bias), **TOL[torch.float32])


@st.composite
def int8_case(draw):
    block_rows, in_features = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    keep = torch.rand(block_rows, in_features, generator=g) < density
    W = torch.randn(4 * block_rows, in_features, generator=g) * keep.repeat_interleave(4, 0)
    x = torch.randn(draw(st.integers(0, 40)), in_features, generator=g) * draw(st.sampled_from([1.0, 1e-3, 0.0]))
    bias = torch.randn(4 * block_rows, generator=g) if draw(st.booleans()) else None
    return BlockSparseInt8.from_dense(W, block=(4, 1)), x, bias


@settings(max_examples=60, deadline=None)
@given(int8_case())
def test_block_int8_linear_random_weights_equal_integer_twin(case):
    fmt, x, bias = case
    y = block_int8_linear(x, fmt, bias)
    assert y.shape == (x.shape[0], fmt.shape[0]) and y.dtype == torch.float32
    torch.testing.assert_close(y, int8_linear_reference(x, fmt, bias), **TOL[torch.float32])


def test_block_int8_linear_bert_shape_within_two_percent_of_fp32():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(768 // 4, 768, generator=g) < 0.2
    W = torch.randn(768, 768, generator=g) * keep.repeat_interleave(4, 0)
    fmt = BlockSparseInt8.from_dense(W, block=(4, 1))
    x = torch.randn(2, 37, 768, generator=g)
    y, expected = block_int8_linear(x, fmt), x @ W.T
    assert y.shape == (2, 37, 768)
    assert float((y - expected).norm() / expected.norm()) < 2e-2
    torch.testing.assert_close(y, int8_linear_reference(x, fmt), **TOL[torch.float32])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 70), st.integers(1, 40), st.sampled_from([16, 32, 64]), st.integers(0, 2**16))
def test_quantize_chunks_equals_quantize_tokens_bit_for_bit(n_tokens, in_features, width, seed):
    """Halves (ties to even), a zero token, ragged 16-column slices, the padding past the last token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-254, 255, (n_tokens, in_features), generator=g) / 2 * torch.rand(n_tokens, 1, generator=g)
    if n_tokens:
        x[0] = 0.0
    chunks = max(1, -(-n_tokens // width))
    xc, sx = torch.empty(chunks, in_features, width, dtype=torch.uint8), torch.empty(chunks * width)
    quantize_chunks(x.numpy(), xc.numpy(), sx.numpy())
    codes, scale = quantize_tokens(x)
    padded = torch.full((chunks * width, in_features), 128, dtype=torch.uint8)
    padded[:n_tokens] = codes
    assert torch.equal(xc, padded.view(chunks, width, in_features).transpose(1, 2))
    assert torch.equal(sx[:n_tokens], scale) and not sx[n_tokens:].any()


def test_quantize_tokens_codes_offset_by_128_and_zero_rows_get_unit_scale():
    x = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0]])
    codes, scale = quantize_tokens(x)
    assert codes.tolist() == [[255, 64, 128], [128, 128, 128]]  # -63.5 rounds to even
    assert scale.tolist() == pytest.approx([0.01, 1.0])


def test_select_linear_kernel_block_int8_only_4x1_runs_vnni():
    W = torch.randn(8, 8)
    assert select_linear_kernel(BlockSparseInt8.from_dense(W, block=(4, 1)), torch.zeros(1, 8)) is block_int8_linear
    other = BlockSparseInt8.from_dense(W, block=(2, 1))
    assert select_linear_kernel(other, torch.zeros(1, 8)) is linear_reference
    with pytest.raises(SparsaError, match="the int8 VNNI kernel takes 4x1 blocks, got 2x1"):
        block_int8_linear(torch.zeros(1, 8), other)


def test_block_int8_linear_wrong_dtype_raises():
    fmt = BlockSparseInt8.from_dense(torch.randn(8, 8), block=(4, 1))
    with pytest.raises(SparsaError, match="takes torch.float32 activations, got torch.bfloat16"):
        block_int8_linear(torch.zeros(1, 8, dtype=torch.bfloat16), fmt)
