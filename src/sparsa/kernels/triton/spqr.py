"""SpQR ``Y = X Wᵀ + b`` on the GPU (Triton), reading the format's packed codes and statistics.

Two launches per call:

1. the dequantized product, like :mod:`sparsa.kernels.triton.quant`: per program a tile of
   ``BLOCK_M`` outputs x ``BLOCK_N`` tokens, ``BLOCK_K`` permuted inputs per step; each weight
   code and each first-level statistic code cut from its packed stream, the statistics decoded
   from their run's fp16 (step, minimum), ``w = s * (q - z)`` in fp32 as the reference, and the
   activations gathered in permuted order ``x[:, perm[k]]``; fp32 sums written to a scratch;
2. the outliers, which overwrite weights in the reference: one program per output row and
   token tile adds ``delta * x[:, col]`` for each of the row's outliers (``delta = value -
   s * (round(z) - z)``, the code under an outlier being ``round(z)`` in the kernel's copy),
   adds the bias and casts.

The layout built once per weight (:func:`spqr_gpu_layout`, cached) holds a copy of the codes
with the code under each outlier set near the zero-point, the unpacked permutation, the
outliers' row pointers and columns, and their deltas.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparsa.formats.bitpack import pack_bits
from sparsa.formats.spqr import SpQR
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.triton.calls import dequant_grid, token_rows
from sparsa.kernels.triton.steps import dot_rows, load_tokens, output_tile, packed_codes

BLOCK_K = 64  # permuted inputs per step of a program (outputs: calls.rows_per_program)


@dataclass(frozen=True)
class SpQRGpuLayout:
    """What the kernels read beside the format's own arrays (on the weight's device).

    Attributes:
        codes: the format's packed codes with the code under each outlier set to ``round(z)``, so
            the weight an outlier replaces is near 0 and adding the outlier back cancels nothing
            large (the CPU kernel does the same).
        perm: [in] int32, permuted input ``k`` is original input ``perm[k]``.
        outlier_ptr: [out + 1] int32, row ``r``'s outliers are ``outlier_ptr[r] .. [r+1]``.
        outlier_col: [nnz] int32, original input column.
        outlier_delta: [nnz] fp32, the outlier minus the dequantized weight it replaces.
    """

    codes: torch.Tensor
    perm: torch.Tensor
    outlier_ptr: torch.Tensor
    outlier_col: torch.Tensor
    outlier_delta: torch.Tensor


def spqr_gpu_layout(weight: SpQR) -> SpQRGpuLayout:
    perm = weight.permutation()
    rows, cols, values = weight.outliers()
    s, z = weight.first_level_stats()  # [out, G]
    position = torch.empty_like(perm)
    position[perm] = torch.arange(perm.numel(), device=perm.device)  # original column -> permuted index
    k = position[cols]
    g = k // weight.group_size
    q = weight.unpacked_codes().clone()
    q[rows, k] = z[rows, g].round().clamp(0, 2**weight.bits - 1).to(q.dtype)
    delta = values.float() - s[rows, g] * (q[rows, k].float() - z[rows, g])
    return SpQRGpuLayout(pack_bits(q, weight.bits), perm.to(torch.int32), weight.outlier_rowptr().to(torch.int32),
                         cols.to(torch.int32), delta)


@triton.jit
def _stat(codes_ptr, stats_ptr, rows, groups, n_groups, stat_group_size, n_bytes, ok, STAT_BITS: tl.constexpr):
    """First-level statistic [BLOCK_M, BLOCK_K] (fp32): its code times its run's step plus minimum."""
    code = packed_codes(codes_ptr, rows[:, None].to(tl.int64) * n_groups + groups, n_bytes, ok, STAT_BITS)
    at = ((rows[:, None] // stat_group_size).to(tl.int64) * n_groups + groups) * 2
    step = tl.load(stats_ptr + at, mask=ok, other=0.0).to(tl.float32)
    minimum = tl.load(stats_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)
    return code.to(tl.float32) * step + minimum


@triton.jit
def _spqr_kernel(x_ptr, perm_ptr, codes_ptr, scale_codes_ptr, zero_codes_ptr, scale_stats_ptr, zero_stats_ptr,
                 y_ptr, n_tokens, out_features, in_features, n_bytes, n_stat_bytes, n_groups, group_size,
                 stat_group_size, stride_x, BITS: tl.constexpr, STAT_BITS: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, tokens, row_ok, token_ok = output_tile(out_features, n_tokens, BLOCK_M, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < in_features
        source = tl.load(perm_ptr + k, mask=k_ok, other=0)
        x = load_tokens(x_ptr, tokens, source, token_ok, k_ok, stride_x)
        ok = row_ok[:, None] & k_ok[None, :]
        q = packed_codes(codes_ptr, rows[:, None].to(tl.int64) * in_features + k[None, :], n_bytes, ok, BITS)
        groups = k[None, :] // group_size
        s = _stat(scale_codes_ptr, scale_stats_ptr, rows, groups, n_groups, stat_group_size, n_stat_bytes, ok,
                  STAT_BITS)
        z = _stat(zero_codes_ptr, zero_stats_ptr, rows, groups, n_groups, stat_group_size, n_stat_bytes, ok,
                  STAT_BITS)
        w = (s * (q.to(tl.float32) - z)).to(x.dtype)  # [BLOCK_M, BLOCK_K]
        acc = dot_rows(acc, x, w, IEEE)
    tl.store(y_ptr + tokens[:, None].to(tl.int64) * out_features + rows[None, :], acc,
             mask=token_ok[:, None] & row_ok[None, :])


@triton.jit
def _outlier_kernel(x_ptr, sums_ptr, ptr_ptr, col_ptr, delta_ptr, bias_ptr, y_ptr, n_tokens, out_features, stride_x,
                    stride_y, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    row, tile_n = tl.program_id(0), tl.program_id(1)
    tokens = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    token_ok = tokens < n_tokens
    value = tl.load(sums_ptr + tokens.to(tl.int64) * out_features + row, mask=token_ok, other=0.0)
    start, end = tl.load(ptr_ptr + row).to(tl.int64), tl.load(ptr_ptr + row + 1).to(tl.int64)
    for i in range(start, end):
        column = tl.load(col_ptr + i)
        x = tl.load(x_ptr + tokens.to(tl.int64) * stride_x + column, mask=token_ok, other=0.0).to(tl.float32)
        value += tl.load(delta_ptr + i) * x
    if HAS_BIAS:
        value += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(y_ptr + tokens.to(tl.int64) * stride_y + row, value.to(y_ptr.dtype.element_ty), mask=token_ok)


@register_linear_kernel("spqr", "cuda", (torch.float16, torch.bfloat16))
def spqr_linear_triton(x: torch.Tensor, weight: SpQR, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an ``SpQR`` weight (no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: SpQR W [out, in].
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "spqr")
    (n_tokens, out_features), in_features = y.shape, x2.shape[1]
    if n_tokens:
        layout = cached_layout(weight, spqr_gpu_layout)
        sums = torch.empty(n_tokens, out_features, dtype=torch.float32, device=x.device)
        grid, block_m, block_n = dequant_grid(n_tokens, out_features)
        _spqr_kernel[grid](
            x2, layout.perm, layout.codes, weight.scale_codes, weight.zero_codes, weight.scale_stats,
            weight.zero_stats, sums, n_tokens, out_features, in_features, weight.codes.numel(),
            weight.scale_codes.numel(), weight.groups, weight.group_size, weight.stat_group_size, x2.stride(0),
            BITS=weight.bits, STAT_BITS=weight.stat_bits, IEEE=x.dtype == torch.float32, BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_K=BLOCK_K)
        _outlier_kernel[(out_features, grid[1])](
            x2, sums, layout.outlier_ptr, layout.outlier_col, layout.outlier_delta, y if bias is None else bias, y,
            n_tokens, out_features, x2.stride(0), y.stride(0), HAS_BIAS=bias is not None, BLOCK_N=block_n)
    return y.reshape(*x.shape[:-1], out_features)
