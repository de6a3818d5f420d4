"""SpQR ``Y = X Wᵀ`` on int8 activations (AVX-512 VNNI): the decode kernel of SpQR.

At decode the SpQR VNNI kernel of :mod:`sparsa.kernels.cpu.spqr` spends three ``vpdpbusd`` per
four codes and token on its 22-bit activations. This kernel rounds the permuted activations to
int8 per SpQR group instead (``β1`` columns), as llama.cpp's CPU decode does per block of 32 (its
Q8 activations) and :mod:`sparsa.kernels.cpu.q8` does for Quant::

    xp[n, group g] ≈ d[n, g] * xq[n, g],   d = max|xp| / 127 over the group, xq int8 (rounded)
    y[n, r] = sum_g s[r, g] * (d[n, g] * (q[r, g] · xq[n, g]) - z[r, g] * sum(xp[n, g]))
              + sum_(outliers of row r) delta * xp[n, column]

One ``vpdpbusd`` per four codes and token, exact in int32 (|q · xq| <= 16 * 15 * 127 per group); the
only approximation beyond fp32 rounding is the activations' rounding, at most ``d / 2`` each. The
zero-point's term uses the exact fp32 group sum and the outliers the exact activations.
:func:`q8_reference` is the same arithmetic in torch.

It reads the VNNI layout of :func:`sparsa.kernels.cpu.spqr.spqr_layout` (the same arrays, in
the same order, as the 22-bit kernel: one layout serves decode and prefill). One step
(:func:`tile_rows`, an LLVM IR intrinsic) runs a tile of 16 rows over every group for up to
four tokens, the sums in registers; a group's codes are unpacked and its ``s, z`` decoded once
for those tokens.
"""

import functools

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsa.formats.spqr import SpQR
from sparsa.kernels.cpu.calls import RowKernel
from sparsa.kernels.cpu.tiles import (LANES, PREFETCH_BYTES, THREE_BIT_PAIR_BYTES, VNNI_COLUMNS, _dpbusd, _fma,
                                      _group_stats, _prefetch, _splat, _vnni_group_codes, outlier_expand)

LEVELS = 127  # |xq| <= LEVELS
CHUNK = 4  # tokens per step: a group's codes and statistics are decoded once for these
TOKENS = 8  # up to this many tokens per call (decode) take this kernel where it fits

_F32, _I32 = ir.FloatType(), ir.IntType(32)
_V16I32, _V16F32 = ir.VectorType(_I32, LANES), ir.VectorType(_F32, LANES)


def q8_activations(xp: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Permuted activations ``xp: [N, G * group_size]`` fp32 -> (xq [N, G * group_size] int8,
    d [N, G], group sums [N, G]) as the kernel forms them (an all-zero group gets d = 1)."""
    groups = xp.reshape(xp.shape[0], xp.shape[1] // group_size, group_size)
    top = groups.abs().amax(-1)
    d = torch.where(top / LEVELS > 0, top / LEVELS, torch.ones_like(top))
    xq = torch.round(groups * (1 / d)[..., None]).clamp(-LEVELS, LEVELS).to(torch.int8)
    return xq.reshape(xp.shape), d, groups.sum(-1)


def q8_reference(x: torch.Tensor, weight: SpQR) -> torch.Tensor:
    """The kernel's arithmetic in torch: ``x [N, in]`` fp32 -> [N, out] fp32."""
    xp = x[:, weight.permutation()]
    q, pos, delta = weight.outlier_free_codes()
    rows = weight.outliers()[0]
    xq, d, sums = q8_activations(xp, weight.group_size)
    s, z = weight.first_level_stats()
    n, groups, gs = x.shape[0], weight.groups, weight.group_size
    dots = torch.einsum("ngk,ogk->nog", xq.reshape(n, groups, gs).double(),
                        q.reshape(-1, groups, gs).double()).float()  # exact integers
    y = (s[None] * (d[:, None] * dots - z[None] * sums[:, None])).sum(-1)
    return y.index_add(1, rows, delta[None] * xp[:, pos])


@functools.cache
def tile_rows(group_size: int, three_bit: bool, tokens: int):
    """The step over every group of one tile for ``tokens`` tokens. Call (element offsets into
    1-D arrays)::

        step(acc, codes, code_at, xq, x_at, x_stride, d, sums, d_at, d_stride, stat_codes, stat_at,
             sstats, zstats, grid_at, groups)

    ``codes`` uint8, the tile's first group at ``code_at`` (VNNI layout; the 3-bit one in pairs of
    groups); ``xq`` int8, token ``j``'s permuted row at ``x_at + j * x_stride``; ``d, sums`` fp32,
    token ``j``'s group ``g`` at ``d_at + j * d_stride + g``; ``stat_codes`` (16 lanes per group from
    ``stat_at``) and the flat fp32 grids ``sstats, zstats`` (group ``g``'s pair at ``grid_at + 2 g``)
    as :func:`sparsa.kernels.cpu.tiles.tile_group_vnni` reads them. Sets ``acc[16 j .. 16 j + 16]``
    (fp32) to token ``j``'s outputs of the tile's rows, outliers not included.
    """
    runs = group_size // VNNI_COLUMNS
    step_groups = 2 if three_bit else 1  # groups per loop iteration (the 3-bit layout's pairs)
    step_bytes = THREE_BIT_PAIR_BYTES if three_bit else 4 * LANES * runs

    def codegen(context, builder, sig, args):
        (acc, codes, code_at, xq, x_at, x_stride, d, sums, d_at, d_stride, stat_codes, stat_at, sstats, zstats,
         grid_at, groups) = args
        ta = sig.args
        i64 = code_at.type
        xq_data = context.make_array(ta[3])(context, builder, xq).data
        d_data = context.make_array(ta[6])(context, builder, d).data
        sum_data = context.make_array(ta[7])(context, builder, sums).data
        totals = [builder.alloca(_V16F32) for _ in range(tokens)]
        for total in totals:
            builder.store(ir.Constant(_V16F32, [0.0] * LANES), total)
        zero = ir.Constant(_V16I32, [0] * LANES)

        def scalar(data, index):
            return builder.load(builder.gep(data, [index]))

        def x_word(index):  # four int8 activations as one int32, broadcast to the 16 lanes
            word = builder.load(builder.bitcast(builder.gep(xq_data, [index]), _I32.as_pointer()), align=1)
            vec = builder.insert_element(ir.Constant(_V16I32, ir.Undefined), word, ir.Constant(_I32, 0))
            return builder.shuffle_vector(vec, ir.Constant(_V16I32, ir.Undefined), ir.Constant(_V16I32, [0] * LANES))

        steps = builder.udiv(builder.sext(groups, i64) if groups.type.width < 64 else groups, ir.Constant(i64, step_groups))
        with cgutils.for_range(builder, steps) as loop:
            u = loop.index
            g0 = builder.mul(u, ir.Constant(i64, step_groups))
            at = builder.add(code_at, builder.mul(u, ir.Constant(i64, step_bytes)))
            _prefetch(context, builder, ta[1], codes, builder.add(at, ir.Constant(i64, PREFETCH_BYTES)))
            words: dict = {}
            for h in range(step_groups):
                g = builder.add(g0, ir.Constant(i64, h))
                operands = _vnni_group_codes(context, builder, ta[1], codes, at, h, runs, three_bit, words)
                s, z = _group_stats(context, builder, (ta[10], None, ta[12], ta[13]),
                                    (stat_codes, builder.add(stat_at, builder.mul(g, ir.Constant(i64, LANES))), sstats,
                                     zstats, builder.add(grid_at, builder.mul(g, ir.Constant(i64, 2)))), 0)
                for j in range(tokens):
                    row = builder.add(x_at, builder.mul(x_stride, ir.Constant(i64, j)))
                    first = builder.add(row, builder.mul(g, ir.Constant(i64, group_size)))
                    dot = zero
                    for operand, column in operands:
                        dot = _dpbusd(builder, dot, operand, x_word(builder.add(first, ir.Constant(i64, column))))
                    at_g = builder.add(builder.add(d_at, builder.mul(d_stride, ir.Constant(i64, j))), g)
                    dg, sg = (_splat(builder, scalar(data, at_g)) for data in (d_data, sum_data))
                    # s * (d * dot - z * sum), the reference's order
                    inner = builder.fsub(builder.fmul(builder.sitofp(dot, _V16F32), dg), builder.fmul(z, sg))
                    builder.store(_fma(builder, s, inner, builder.load(totals[j])), totals[j])
        acc_data = context.make_array(ta[0])(context, builder, acc).data
        for j, total in enumerate(totals):
            ptr = builder.bitcast(builder.gep(acc_data, [ir.Constant(i64, LANES * j)]), _V16F32.as_pointer())
            builder.store(builder.load(total), ptr, align=4)
        return context.get_dummy_value()

    @intrinsic
    def step(typingctx, acc, codes, code_at, xq, x_at, x_stride, d, sums, d_at, d_stride, stat_codes, stat_at, sstats,
             zstats, grid_at, groups):
        return types.void(acc, codes, code_at, xq, x_at, x_stride, d, sums, d_at, d_stride, stat_codes, stat_at, sstats,
                          zstats, grid_at, groups), codegen

    return step


EXPONENT = np.int32(0x7F800000)  # fp32 exponent bits: all set for inf and nan


@numba.njit(error_model="numpy")
def finite_rows(x, finite):  # pragma: no cover - compiled
    """``finite[n]``: whether token ``n`` of ``x [N, in]`` (C-contiguous) has no inf or nan, from the
    bits (an integer max that vectorizes; a float test would be folded away under fastmath)."""
    bits = x.view(np.int32)
    for n in range(x.shape[0]):
        top = np.int32(0)
        for k in range(x.shape[1]):
            top = max(top, bits[n, k] & EXPONENT)
        finite[n] = top != EXPONENT


@numba.njit(fastmath=True, error_model="numpy")
def quantize_groups(x, perm, group_size, xp, xq, d, sums):  # pragma: no cover - compiled
    """``x [N, in]`` -> permuted ``xp`` and ``xq`` (N rows of ``G * group_size``, zeros past ``in``),
    ``d`` and ``sums`` (N rows of G) as :func:`q8_activations` (finite tokens; others are garbage)."""
    n_tokens, in_features = x.shape
    groups = d.shape[0] // n_tokens
    width = groups * group_size
    for n in range(n_tokens):
        row = n * width
        for k in range(in_features):
            xp[row + k] = x[n, perm[k]]
        xp[row + in_features:row + width] = 0.0
        for g in range(groups):
            at = row + g * group_size
            top, total = np.float32(0.0), np.float32(0.0)
            for k in range(at, at + group_size):
                top = max(top, abs(xp[k]))
                total += xp[k]
            step = top / np.float32(LEVELS)
            step = step if step > 0 else np.float32(1.0)  # an all-zero (or all-denormal) group
            inv = np.float32(1.0) / step
            for k in range(at, at + group_size):  # |x| * inv <= 127 (to a rounding): no clamp needed
                xq[k] = np.int8(np.int32(np.rint(xp[k] * inv)))
            d[n * groups + g], sums[n * groups + g] = step, total


@functools.cache
def compiled(group_size: int, three_bit: bool) -> RowKernel:
    """The kernel for the VNNI layout's arrays: units of one tile; ``operand = (perm, codes, stat_codes,
    sstats, zstats, stat_rows, slots, masks, starts, pos, delta)`` (``stat_rows`` = β2, a multiple of
    16), ``scratch = (finite, xp, xq, d, sums)`` (:func:`quantize_groups`); a token with inf/nan
    activations gets nan outputs."""
    many, one = tile_rows(group_size, three_bit, CHUNK), tile_rows(group_size, three_bit, 1)
    group_bytes = THREE_BIT_PAIR_BYTES // 2 if three_bit else 4 * LANES * (group_size // VNNI_COLUMNS)

    @numba.njit(error_model="numpy")
    def prepare(x, operand, scratch):  # pragma: no cover - compiled
        finite, xp, xq, d, sums = scratch
        finite_rows(x, finite)
        quantize_groups(x, operand[0], group_size, xp, xq, d, sums)

    @numba.njit(fastmath=True, error_model="numpy")
    def rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Tiles ``first .. last`` of y[N, M] = x W^T."""
        perm, codes, stat_codes, sstats, zstats, stat_rows, slots, masks, starts, pos, delta = operand
        finite, xp, xq, d, sums = scratch
        n_tokens, out_features = y.shape
        groups = sstats.shape[1]
        width = groups * group_size
        grids_s, grids_z = sstats.reshape(-1), zstats.reshape(-1)
        acc = np.empty(CHUNK * LANES, np.float32)
        for t in range(first, last):
            r0 = t * LANES
            code_at, stat_at, grid_at = t * groups * group_bytes, t * groups * LANES, (r0 // stat_rows) * groups * 2
            n = 0
            while n < n_tokens:
                count = CHUNK if n + CHUNK <= n_tokens else 1
                if count == CHUNK:
                    many(acc, codes, code_at, xq, n * width, width, d, sums, n * groups, groups, stat_codes, stat_at,
                         grids_s, grids_z, grid_at, groups)
                else:
                    one(acc, codes, code_at, xq, n * width, width, d, sums, n * groups, groups, stat_codes, stat_at,
                        grids_s, grids_z, grid_at, groups)
                for j in range(count):
                    outlier_expand(acc, j * LANES, masks, slots[t], slots[t + 1], starts[t], pos, delta, xp,
                                   (n + j) * width)
                    for lane in range(min(LANES, out_features - r0)):
                        y[n + j, r0 + lane] = acc[j * LANES + lane] if finite[n + j] else np.nan
                n += count

    def scratch_for(operand: tuple, tokens: int) -> tuple:
        groups = operand[3].shape[1]
        width = groups * group_size
        return (np.empty(tokens, np.bool_), np.empty(tokens * width, np.float32), np.empty(tokens * width, np.int8),
                np.empty(tokens * groups, np.float32), np.empty(tokens * groups, np.float32))

    return RowKernel(prepare, rows, LANES, scratch_for, prepare_reads=(0,))
