"""Block-sparse ``Y = X Wᵀ + b`` on the GPU (Triton), for blocks with sides of 16..64 and for
``1 x C`` stripes.

The weight is BSR (``BlockSparse``, the same arrays the CPU kernel reads, moved to the device
with the model: the block index is built once, at load time). One program computes one block
row of ``R`` outputs for a tile of ``BLOCK_N`` tokens:

    acc[BLOCK_N, R] = 0
    for b in crow[br] .. crow[br+1]:                  # the block row's kept blocks
        x = X[tokens, col[b]*C : col[b]*C + C]        # [BLOCK_N, C], zero past the last token
        acc += x @ values[b]ᵀ                         # tensor cores, fp32 accumulation
    Y[tokens, br*R : br*R + R] = acc + b

so the work and the weight bytes read both fall with the kept blocks, and a 90% sparse weight
reads a tenth of the dense one. ``tl.dot`` needs every side >= 16, so ``R``, ``C`` and
``BLOCK_N`` are powers of two from 16.

Stripes (``1 x C``, ``C`` in :data:`STRIPES`) share no columns between rows, so there is no
product for tensor cores: one program per output row and token tile sums ``x[:, stripe] *
values[b]`` over the row's stripes in fp32. Other block shapes take the reference (``takes``).
"""

import torch
import triton
import triton.language as tl

from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.triton.calls import token_rows, tokens_per_program
from sparsa.kernels.triton.steps import dot_rows

SIDES = (16, 32, 64)  # block sides the tensor-core kernel takes
STRIPES = (16, 32, 64, 128)  # stripe widths (1 x C blocks) the stripe kernel takes


@triton.jit
def _block_sparse_kernel(x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr, n_tokens, stride_x, stride_y,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, R: tl.constexpr, C: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    block_row, tile = tl.program_id(0), tl.program_id(1)
    tokens = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    rows, cols = tl.arange(0, R), tl.arange(0, C)
    in_range = tokens[:, None] < n_tokens
    acc = tl.zeros((BLOCK_N, R), dtype=tl.float32)
    start, end = tl.load(crow_ptr + block_row).to(tl.int64), tl.load(crow_ptr + block_row + 1).to(tl.int64)
    for b in range(start, end):
        k0 = tl.load(col_ptr + b).to(tl.int64) * C
        x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + k0 + cols[None, :], mask=in_range, other=0.0)
        w = tl.load(values_ptr + b * (R * C) + rows[:, None] * C + cols[None, :]).to(x.dtype)  # b: int64
        acc = dot_rows(acc, x, w, IEEE)
    outputs = block_row * R + rows
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outputs).to(tl.float32)[None, :]
    tl.store(y_ptr + tokens[:, None].to(tl.int64) * stride_y + outputs[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=in_range)


@triton.jit
def _stripe_kernel(x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr, n_tokens, stride_x, stride_y,
                   HAS_BIAS: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr):
    row, tile = tl.program_id(0), tl.program_id(1)
    tokens = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, C)
    token_ok = tokens < n_tokens
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start, end = tl.load(crow_ptr + row).to(tl.int64), tl.load(crow_ptr + row + 1).to(tl.int64)
    for b in range(start, end):
        k0 = tl.load(col_ptr + b).to(tl.int64) * C
        x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + k0 + cols[None, :], mask=token_ok[:, None],
                    other=0.0)
        w = tl.load(values_ptr + b * C + cols).to(x.dtype).to(tl.float32)  # rounded as the activations
        acc += tl.sum(x.to(tl.float32) * w[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(y_ptr + tokens.to(tl.int64) * stride_y + row, acc.to(y_ptr.dtype.element_ty), mask=token_ok)


def takes(weight: BlockSparse) -> bool:
    """Whether a kernel here runs this weight: both block sides in :data:`SIDES`, or a ``1 x C``
    stripe with ``C`` in :data:`STRIPES`."""
    R, C = weight.block
    return (R in SIDES and C in SIDES) or (R == 1 and C in STRIPES)


@register_linear_kernel("block", "cuda", (torch.float16, torch.bfloat16), accepts=takes)
def block_sparse_linear_triton(x: torch.Tensor, weight: BlockSparse, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for a ``BlockSparse`` weight with 16/32/64-sided blocks or 1 x 16..128
    stripes (no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: BlockSparse W [out, in]; its values are cast to ``x.dtype`` block by block.
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "block")
    if not takes(weight):
        raise SparsaError(f"the Triton block kernel takes blocks with sides in {SIDES} or 1xC stripes with C "
                          f"in {STRIPES}, got {weight.block[0]}x{weight.block[1]}")
    (n_tokens, out_features), R, C = y.shape, *weight.block
    if n_tokens:
        block_n = tokens_per_program(n_tokens)
        grid = (out_features // R, triton.cdiv(n_tokens, block_n))
        operands = (x2, weight.crow, weight.col, weight.values, y if bias is None else bias, y, n_tokens, x2.stride(0),
                    y.stride(0))
        if R == 1:
            _stripe_kernel[grid](*operands, HAS_BIAS=bias is not None, C=C, BLOCK_N=block_n)
        else:
            _block_sparse_kernel[grid](*operands, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, R=R, C=C,
                                       BLOCK_N=block_n)
    return y.reshape(*x.shape[:-1], out_features)
