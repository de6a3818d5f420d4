"""SpQR ``Y = X Wᵀ + b`` on CPU: 16-row tiles dequantized in AVX-512 registers, never the whole W.

Once per weight (:func:`spqr_layout`, cached while the weight is unchanged) the stored arrays
are rearranged for the inner loop: codes in the tile layout of :mod:`sparsa.kernels.cpu.tiles`
(two per byte up to 4 bits), the second-level codes of every (row, group) statistic as bytes
in the same tile order, the fp16 (step, minimum) grids widened to fp32, and each outlier as
its permuted column and its *difference* to the dequantized weight it replaces.

Per call the activations are permuted once (``xp[n, k] = x[n, perm[k]]``) and summed per
group (``xs[n, g]``). Each thread walks its tiles; for tile ``t`` and group ``g`` one
:func:`~sparsa.kernels.cpu.tiles.tile_group` step adds, for up to four tokens at a time,

    acc[n, l] += s[l] * sum_k q[l, k] * xp[n, k] + m[l] * xs[n, g],   m = -s * z

with ``s, z`` decoded from their codes in registers (the step and minimum are one scalar
pair when β2 is a multiple of 16: the tile's rows share them; otherwise they are decoded
per lane first). Last, each row adds its outlier corrections ``delta * xp[n, pos]``.
Batch > 1 is the same single call: every group's codes are unpacked once per four tokens.
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch

from sparsa.formats.spqr import SpQR
from sparsa.formats.bitpack import unpack_bits
from sparsa.kernels.cpu.block_sparse import check_activations
from sparsa.kernels.cpu.layouts import cached_layout
from sparsa.kernels.cpu.tiles import LANES, NIBBLE_BITS, tile_codes, tile_group
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_CHUNK = 4  # tokens per tile step: each group's codes are unpacked once for these


@dataclass(frozen=True)
class SpQRLayout:
    """An SpQR weight arranged for :func:`compiled` (numpy views, shapes in the field comments)."""

    codes: np.ndarray  # [tiles * G * steps * 16] uint8, tile layout
    scale_codes: np.ndarray  # [tiles * G * 16] uint8, second-level codes in tile order
    zero_codes: np.ndarray  # [tiles * G * 16] uint8
    scale_stats: np.ndarray  # [T, G, 2] fp32 (step, minimum) per run of β2 rows
    zero_stats: np.ndarray  # [T, G, 2] fp32
    perm: np.ndarray  # [in] int64, permuted column k is original column perm[k]
    rowptr: np.ndarray  # [out + 1] int64, outliers of row r at rowptr[r] .. rowptr[r + 1]
    outlier_pos: np.ndarray  # [nnz] int32, permuted column of each outlier
    outlier_delta: np.ndarray  # [nnz] fp32, stored value minus the dequantized weight
    steps: int  # 16-byte code loads per group


def stat_tiles(codes: torch.Tensor) -> torch.Tensor:
    """[out, G] codes -> [tiles * G * 16] uint8, tile order (rows past ``out`` are 0)."""
    out_features, groups = codes.shape
    tiles = -(-out_features // LANES)
    padded = torch.cat([codes.to(torch.uint8), codes.new_zeros(tiles * LANES - out_features, groups, dtype=torch.uint8)])
    return padded.reshape(tiles, LANES, groups).transpose(1, 2).contiguous().reshape(-1)


def spqr_layout(weight: SpQR) -> SpQRLayout:
    """Rearrange ``weight`` for the kernel (once per weight; see the module docstring)."""
    out_features, in_features = weight.shape
    nibbles = weight.bits <= NIBBLE_BITS
    n_stats = out_features * weight.groups
    scale_codes = unpack_bits(weight.scale_codes, weight.stat_bits, n_stats).view(out_features, -1)
    zero_codes = unpack_bits(weight.zero_codes, weight.stat_bits, n_stats).view(out_features, -1)
    perm = weight.permutation()
    position = torch.empty_like(perm)
    position[perm] = torch.arange(in_features)
    rows, cols, values = weight.outliers()
    pos = position[cols]
    s, z = weight.first_level_stats()
    q = weight.unpacked_codes()
    g = pos // weight.group_size
    dequantized = s[rows, g] * (q[rows, pos].float() - z[rows, g])
    return SpQRLayout(
        codes=tile_codes(q, weight.group_size, nibbles).numpy(), scale_codes=stat_tiles(scale_codes).numpy(),
        zero_codes=stat_tiles(zero_codes).numpy(), scale_stats=weight.scale_stats.float().numpy(),
        zero_stats=weight.zero_stats.float().numpy(), perm=perm.numpy(), rowptr=weight.outlier_rowptr().numpy(),
        outlier_pos=pos.int().numpy(), outlier_delta=(values.float() - dequantized).numpy(),
        steps=-(-weight.group_size // 2) if nibbles else weight.group_size)


@functools.cache
def compiled(group_size: int, steps: int, nibbles: bool):
    """The tile kernel for one group size and code packing (the step unrolls over the group)."""
    coded_many, coded_one = (tile_group(steps, n, nibbles, "coded") for n in (TOKEN_CHUNK, 1))
    float_many, float_one = (tile_group(steps, n, nibbles, "float") for n in (TOKEN_CHUNK, 1))
    chunk = TOKEN_CHUNK

    @numba.njit(parallel=True, fastmath=True)
    def spqr_tiles(x, perm, codes, sc, zc, sstats, zstats, stat_rows, rowptr, pos, delta, y, tasks):  # pragma: no cover
        """y[N, M] = x W^T for the layout's arrays (``stat_rows`` = β2)."""
        n_tokens, in_features = x.shape
        out_features = y.shape[1]
        groups = sstats.shape[1]
        width = groups * group_size + 1  # one zero past the last group: an odd group's spare nibble reads it
        xp = np.zeros(n_tokens * width, np.float32)
        xs = np.zeros(n_tokens * groups, np.float32)
        for n in range(n_tokens):
            for k in range(in_features):
                xp[n * width + k] = x[n, perm[k]]
            for g in range(groups):
                total = np.float32(0.0)
                for k in range(g * group_size, (g + 1) * group_size):
                    total += xp[n * width + k]
                xs[n * groups + g] = total
        tiles = (out_features + LANES - 1) // LANES
        aligned = stat_rows % LANES == 0
        per_task = (tiles + tasks - 1) // tasks
        for task in numba.prange(tasks):
            acc = np.empty(n_tokens * LANES, np.float32)
            s = np.empty(LANES, np.float32)
            m = np.empty(LANES, np.float32)
            for t in range(task * per_task, min(tiles, (task + 1) * per_task)):
                acc[:] = 0.0
                r0 = t * LANES
                for g in range(groups):
                    code_at = (t * groups + g) * steps * LANES
                    stat_at = (t * groups + g) * LANES
                    x_at = g * group_size
                    if aligned:  # the tile's 16 rows share one (step, minimum) pair per statistic
                        run = r0 // stat_rows
                        s_step, s_min = np.float32(sstats[run, g, 0]), np.float32(sstats[run, g, 1])
                        z_step, z_min = np.float32(zstats[run, g, 0]), np.float32(zstats[run, g, 1])
                        n = 0
                        while n + chunk <= n_tokens:
                            coded_many(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, xs, n * groups + g,
                                       groups, sc, zc, stat_at, s_step, s_min, z_step, z_min)
                            n += chunk
                        while n < n_tokens:
                            coded_one(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, xs, n * groups + g,
                                      groups, sc, zc, stat_at, s_step, s_min, z_step, z_min)
                            n += 1
                    else:  # runs end inside the tile: decode s and m lane by lane
                        for lane in range(LANES):
                            r = min(r0 + lane, out_features - 1)
                            run = r // stat_rows
                            sv = np.float32(sc[stat_at + lane]) * sstats[run, g, 0] + sstats[run, g, 1]
                            zv = np.float32(zc[stat_at + lane]) * zstats[run, g, 0] + zstats[run, g, 1]
                            s[lane], m[lane] = sv, -(sv * zv)
                        n = 0
                        while n + chunk <= n_tokens:
                            float_many(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, xs,
                                       n * groups + g, groups, s, m, 0)
                            n += chunk
                        while n < n_tokens:
                            float_one(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, xs,
                                      n * groups + g, groups, s, m, 0)
                            n += 1
                for lane in range(min(LANES, out_features - r0)):
                    r = r0 + lane
                    for n in range(n_tokens):
                        total = acc[n * LANES + lane]
                        for o in range(rowptr[r], rowptr[r + 1]):
                            total += delta[o] * xp[n * width + pos[o]]
                        y[n, r] = total

    return spqr_tiles


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
        lay = cached_layout(weight, spqr_layout)
        kernel = compiled(weight.group_size, lay.steps, weight.bits <= NIBBLE_BITS)
        kernel(x2.numpy(), lay.perm, lay.codes, lay.scale_codes, lay.zero_codes, lay.scale_stats, lay.zero_stats,
               weight.stat_group_size, lay.rowptr, lay.outlier_pos, lay.outlier_delta, y.numpy(),
               4 * numba.get_num_threads())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
