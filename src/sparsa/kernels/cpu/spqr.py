"""SpQR ``Y = X Wᵀ + b`` on CPU (numba): one weight row at a time, dequantized in L1, never the whole W.

Per call, the activations are permuted once (``xp[n, k] = x[n, perm[k]]``), so a row can stay
in the stored (permuted) column order. Each thread then walks its rows; for row ``r`` it

1. decodes the row's first-level statistics ``s, z`` from their packed codes and the fp16
   second-level grids (``s = code * step + minimum``, as the format decodes them);
2. unpacks the row's ``bits``-bit codes eight at a time (eight codes fill ``bits`` whole bytes)
   and writes ``w[k] = s[g] * (q[k] - z[g])`` into a row buffer of ``in`` floats;
3. overwrites the row's outliers in that buffer (at their permuted positions);
4. takes one dot product per token, ``y[n, r] = w · xp[n]``.

The row buffer is the only dequantized data; all tokens of a call share it, so batch > 1 is the
same single call. The small fp16 arrays (second-level grids, outlier values) are widened to
fp32 per call (numba has no float16); the conversion is exact.
"""

import functools

import numba
import numpy as np
import torch

from sparsa.formats.bitpack import index_bits
from sparsa.formats.spqr import SpQR, count_bits
from sparsa.kernels.cpu.block_sparse import check_activations
from sparsa.kernels.dispatch import register_linear_kernel


@numba.njit(inline="always")
def read_code(packed, index, bits):  # pragma: no cover - compiled
    """Code ``index`` of an LSB-first stream of ``bits``-bit codes (``bits`` <= 32)."""
    bit = index * bits
    at, shift = bit >> 3, bit & 7
    word = np.int64(packed[at])
    for extra in range(1, (shift + bits + 7) >> 3):
        word |= np.int64(packed[at + extra]) << (8 * extra)
    return (word >> shift) & ((1 << bits) - 1)


@functools.cache
def compiled(bits: int, group_size: int, stat_bits: int):
    """The row kernel with the code widths and group size as constants, so LLVM unrolls the
    unpacking (``bits`` bytes -> eight codes) and vectorizes the dequantization."""
    mask = (1 << bits) - 1

    @numba.njit(parallel=True, fastmath=True)
    def spqr_rows(x, codes, scale_codes, zero_codes, stat_rows, scale_stats, zero_stats, counts, cbits,
                  outlier_col, outlier_values, perm, pbits, y, tasks):  # pragma: no cover - compiled
        """y[N, M] = x W^T for the SpQR arrays (the fp16 ones passed as fp32)."""
        n_tokens, in_features = x.shape
        out_features = y.shape[1]
        groups = in_features // group_size
        invperm = np.empty(in_features, np.int64)  # permuted activations, inverse permutation, row pointers
        xp = np.empty((n_tokens, in_features), np.float32)
        for k in range(in_features):
            p = read_code(perm, k, pbits)
            invperm[p] = k
            for n in range(n_tokens):
                xp[n, k] = x[n, p]
        rowptr = np.zeros(out_features + 1, np.int64)
        for r in range(out_features):
            rowptr[r + 1] = rowptr[r] + read_code(counts, r, cbits)
        aligned = (in_features * bits) % 8 == 0 and in_features % 8 == 0
        per_task = (out_features + tasks - 1) // tasks
        for task in numba.prange(tasks):
            w = np.empty(in_features, np.float32)
            s = np.empty(groups, np.float32)
            z = np.empty(groups, np.float32)
            for r in range(task * per_task, min(out_features, (task + 1) * per_task)):
                run = r // stat_rows
                for g in range(groups):
                    at = r * groups + g
                    s[g] = np.float32(read_code(scale_codes, at, stat_bits)) * scale_stats[run, g, 0] + scale_stats[run, g, 1]
                    z[g] = np.float32(read_code(zero_codes, at, stat_bits)) * zero_stats[run, g, 0] + zero_stats[run, g, 1]
                if aligned:
                    base = r * in_features * bits // 8
                    for c in range(in_features // 8):  # eight codes fill ``bits`` whole bytes
                        word = np.int64(0)
                        for b in range(bits):
                            word |= np.int64(codes[base + c * bits + b]) << (8 * b)
                        for j in range(8):
                            g = (8 * c + j) // group_size
                            w[8 * c + j] = s[g] * (np.float32((word >> (bits * j)) & mask) - z[g])
                else:
                    for k in range(in_features):
                        g = k // group_size
                        w[k] = s[g] * (np.float32(read_code(codes, r * in_features + k, bits)) - z[g])
                for o in range(rowptr[r], rowptr[r + 1]):
                    w[invperm[outlier_col[o]]] = outlier_values[o]
                for n in range(n_tokens):
                    acc = np.float32(0.0)
                    for k in range(in_features):
                        acc += w[k] * xp[n, k]
                    y[n, r] = acc

    return spqr_rows


@register_linear_kernel("spqr", "cpu", (torch.float32,))
def spqr_linear(x: torch.Tensor, weight: SpQR, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an ``SpQR`` weight and fp32 activations on CPU (no autograd).

    Args:
        x: [..., in] fp32.
        weight: SpQR W [out, in].
        bias: [out] or None.
    Returns:
        [..., out] fp32.
    """
    check_activations(x, weight, torch.float32)
    lead, (out_features, in_features) = x.shape[:-1], weight.shape
    x2 = x.detach().reshape(-1, in_features).contiguous()
    y = torch.empty(x2.shape[0], out_features)
    if x2.shape[0]:
        half = (lambda t: t.float().numpy())  # fp16 grids and outliers, exactly
        kernel = compiled(weight.bits, weight.group_size, weight.stat_bits)
        kernel(x2.numpy(), weight.codes.numpy(), weight.scale_codes.numpy(), weight.zero_codes.numpy(),
               weight.stat_group_size, half(weight.scale_stats), half(weight.zero_stats),
               weight.outlier_counts.numpy(), count_bits(in_features), weight.outlier_col.numpy(),
               half(weight.outlier_values), weight.perm.numpy(), index_bits(in_features), y.numpy(),
               4 * numba.get_num_threads())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
