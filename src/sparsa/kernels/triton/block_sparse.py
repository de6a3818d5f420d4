"""Block-sparse ``Y = X Wᵀ + b`` on the GPU (Triton), for square-ish blocks of 16..64 sides.

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
``BLOCK_N`` are powers of two from 16 (``accepts``); other block shapes take the reference.
"""

import torch
import triton
import triton.language as tl

from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.triton.calls import token_rows, tokens_per_program
from sparsa.kernels.triton.steps import dot_rows

SIDES = (16, 32, 64)  # block sides the kernel takes


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


def takes(weight: BlockSparse) -> bool:
    """Whether the kernel runs this weight: both block sides in :data:`SIDES`."""
    return weight.block[0] in SIDES and weight.block[1] in SIDES


@register_linear_kernel("block", "cuda", (torch.float16, torch.bfloat16), accepts=takes)
def block_sparse_linear_triton(x: torch.Tensor, weight: BlockSparse, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for a ``BlockSparse`` weight with 16/32/64-sided blocks (no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: BlockSparse W [out, in]; its values are cast to ``x.dtype`` block by block.
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "block")
    if not takes(weight):
        raise SparsaError(f"the Triton block kernel takes blocks with sides in {SIDES}, "
                          f"got {weight.block[0]}x{weight.block[1]}")
    (n_tokens, out_features), R, C = y.shape, *weight.block
    if n_tokens:
        block_n = tokens_per_program(n_tokens)
        grid = (out_features // R, triton.cdiv(n_tokens, block_n))
        _block_sparse_kernel[grid](x2, weight.crow, weight.col, weight.values, y if bias is None else bias, y,
                                   n_tokens, x2.stride(0), y.stride(0), HAS_BIAS=bias is not None,
                                   IEEE=x.dtype == torch.float32, R=R, C=C, BLOCK_N=block_n)
    return y.reshape(*x.shape[:-1], out_features)
