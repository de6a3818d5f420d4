"""The Triton block-sparse kernel against the reference: under ``TRITON_INTERPRET=1`` on the CPU
(fp32, fp16), on the GPU where there is one (fp16, bf16 too)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats import BlockSparse
from sparsa.kernels import select_linear_kernel
from sparsa.kernels.dispatch import LINEAR_KERNELS
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton
from sparsa.kernels.triton.calls import tokens_per_program
from triton_cases import CUDA, DEVICE, DTYPES, check_kernel, expected, needs_triton, tolerance

pytestmark = needs_triton


@st.composite
def block_case(draw):
    """A random BSR weight with 16..64-sided blocks or 1 x 16..128 stripes (some block rows empty),
    0..70 tokens, maybe a bias."""
    r, c = draw(st.sampled_from([(r, c) for r in (16, 32, 64) for c in (16, 32, 64)] + [(1, 16), (1, 32), (1, 128)]))
    rows, cols = draw(st.integers(1, 40 if r == 1 else 3)), draw(st.integers(1, 3))
    density = draw(st.sampled_from([0.0, 0.3, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    keep = torch.rand(rows, cols, generator=g) < density
    W = torch.randn(rows * r, cols * c, generator=g) * keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    x = torch.randn(draw(st.integers(0, 70)), cols * c, generator=g)
    bias = torch.randn(rows * r, generator=g) if draw(st.booleans()) else None
    return W, (r, c), x, bias, draw(st.sampled_from(DTYPES))


@settings(max_examples=25, deadline=None)
@given(block_case())
def test_triton_block_sparse_random_blocks_match_reference(case):
    W, block, x, bias, dtype = case
    check_kernel(block_sparse_linear_triton, BlockSparse.from_dense(W, block=block), W, x, bias, dtype)


@pytest.mark.parametrize("tokens", [1, 16, 17, 65, 130])
def test_triton_block_sparse_token_tiles_and_empty_block_rows(tokens):
    """One token, exact tiles, ragged tiles, more tiles than one program holds; leading dims."""
    g = torch.Generator().manual_seed(tokens)
    keep = torch.rand(4, 6, generator=g) < 0.4
    keep[1] = False
    W = torch.randn(128, 192, generator=g) * keep.repeat_interleave(32, 0).repeat_interleave(32, 1)
    fmt = BlockSparse.from_dense(W, block=(32, 32)).to(DEVICE)
    x = torch.randn(tokens, 192, generator=g).to(DEVICE, torch.float16)
    y = block_sparse_linear_triton(x.view(1, tokens, 192), fmt)
    assert y.shape == (1, tokens, 128)
    torch.testing.assert_close(y[0].cpu().float(), expected(x, W.to(DEVICE), None).cpu().float(),
                               **tolerance(torch.float16))
    assert not y[0, :, 32:64].any()  # the empty block row


def test_tokens_per_program_powers_of_two_from_16_to_64():
    assert [tokens_per_program(n) for n in (0, 1, 16, 17, 33, 64, 65, 4096)] == [16, 16, 16, 32, 64, 64, 64, 64]


def test_triton_block_sparse_refuses_small_blocks_and_wrong_width():
    with pytest.raises(SparsaError, match="takes blocks with sides in"):
        block_sparse_linear_triton(torch.zeros(2, 16), BlockSparse.from_dense(torch.randn(16, 16), block=(2, 8)))
    with pytest.raises(SparsaError, match=r"activations \[\.\.\., 8\] do not match a 16x16 weight"):
        block_sparse_linear_triton(torch.zeros(2, 8), BlockSparse.from_dense(torch.randn(16, 16), block=(16, 16)))


def test_dispatch_files_the_triton_kernel_for_cuda_fp16_and_bf16_and_16_sided_blocks():
    fmt = BlockSparse.from_dense(torch.randn(32, 32), block=(16, 16))
    for dtype in (torch.float16, torch.bfloat16):
        entry = LINEAR_KERNELS[("block", "cuda", dtype)]
        assert entry.kernel is block_sparse_linear_triton and entry.accepts(fmt)
        assert entry.accepts(BlockSparse.from_dense(torch.randn(32, 32), block=(1, 16)))
        assert not entry.accepts(BlockSparse.from_dense(torch.randn(32, 32), block=(16, 1)))
    assert ("block", "cuda", torch.float32) not in LINEAR_KERNELS
    if CUDA:
        assert select_linear_kernel(fmt.to("cuda"), torch.zeros(1, 32, dtype=torch.float16, device="cuda")) \
            is block_sparse_linear_triton
