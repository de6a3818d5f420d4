"""SpQR ``Y = X Wᵀ + b`` on CPU: 16-row tiles dequantized in AVX-512 registers, never the whole W.

Once per weight (:func:`spqr_layout`, cached while the weight is unchanged) the stored arrays
are rearranged for the inner loop: codes in the tile layout of :mod:`sparsa.kernels.cpu.tiles`
(two per byte up to 4 bits), the second-level codes of every (row, group) statistic as bytes
in the same tile order, the fp16 (step, minimum) grids (widened to fp32 for the fp32 path), and each outlier as
its permuted column and its *difference* to the dequantized weight it replaces (the code
under it set nearest the zero-point, so that weight is small and nothing large cancels).

Per call the activations are permuted once (``xp[n, k] = x[n, perm[k]]``). Each thread
walks its tiles of 16 rows; per group a step of :mod:`sparsa.kernels.cpu.tiles` adds, for up
to four tokens at a time, the group's contribution with ``s, z`` decoded in registers:

* VNNI path (AVX-512 VNNI, codes of <= 4 bits, β1 a multiple of 8, β2 of 16), one layout for two
  kernels: at decode (up to ``spqr_q8.TOKENS`` tokens) activations rounded to int8 per group
  (:mod:`sparsa.kernels.cpu.spqr_q8`, llama.cpp's scheme); for more tokens split into three int8
  parts per token (22 bits against the token's largest magnitude), integer dot products exact in
  int32, eight groups per step with the sums in registers, which adds ``max|x| / (2**21 - 1)``
  per activation to fp32 rounding;
* fp32 path (everything else): ``acc += s * sum_k (q - z) * xp`` in fp32; the step and minimum
  are one scalar pair when β2 is a multiple of 16, else decoded per lane first.

Last, each tile adds its outlier corrections ``delta * xp[n, pos]``, up to 16 rows per gather
(:func:`~sparsa.kernels.cpu.tiles.outlier_slots`: 6 bytes per outlier, 2 per gather).
Batch > 1 is the same single call: every group's codes are unpacked once per four tokens.
Inside :func:`fp32_path` weights bind to the fp32 path even where the VNNI path fits (tests
compare the two on one CPU).
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numba
import numpy as np
import torch

from sparsa.formats.spqr import SpQR
from sparsa.formats.bitpack import unpack_bits
from sparsa.kernels.cpu import spqr_q8
from sparsa.kernels.cpu.calls import RowKernel, bind_step, check_activations
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.cpu.tiles import (LANES, NIBBLE_BITS, THREE_BIT_GROUP, THREE_BIT_PAIR_BYTES, VNNI_COLUMNS, X_LEVELS,
                                      X_PARTS, outlier_expand, outlier_slots, tile_codes, tile_group, tile_group_vnni,
                                      vnni3_codes, vnni_codes)
from sparsa.kernels.cpu.vnni import HAS_VNNI
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_CHUNK = 4  # tokens per tile step: each group's codes are unpacked once for these
GROUP_BLOCK = 8  # groups per VNNI step: the per-step overhead spread over 8 * 256 weights


@dataclass(frozen=True)
class SpQRLayout:
    """An SpQR weight arranged for :func:`compiled` (numpy views, shapes in the field comments)."""

    codes: np.ndarray  # tile layout (fp32 path: [tiles * G * loads * 16] uint8), VNNI or 3-bit VNNI layout
    scale_codes: np.ndarray  # fp32 path: [tiles * G * 16] uint8, second-level codes in tile order (VNNI: empty)
    zero_codes: np.ndarray  # fp32 path: [tiles * G * 16] uint8 (VNNI: empty)
    stat_codes: np.ndarray  # VNNI path: [tiles * G * 16] uint8, scale code | zero code << 4 (fp32: empty)
    scale_stats: np.ndarray  # [T, G, 2] (step, minimum) per run of β2 rows: fp32 (fp32 path), fp16 bits as int16 (VNNI)
    zero_stats: np.ndarray  # [T, G, 2] as scale_stats
    perm: np.ndarray  # [in] int64, permuted column k is original column perm[k]
    outlier_slots: np.ndarray  # [tiles + 1] int64, tile t's outlier slots (up to 16 rows each) at slots[t] .. slots[t + 1]
    outlier_masks: np.ndarray  # [slots] int16, bit l: the slot holds an entry of the tile's row l
    outlier_starts: np.ndarray  # [tiles] int64, tile t's first entry
    outlier_pos: np.ndarray  # [nnz] int16 (int32 past 32768 inputs), permuted column, slot order
    outlier_delta: np.ndarray  # [nnz] fp32, stored value minus the weight its (reset) code dequantizes to
    vnni: bool  # codes in a VNNI layout, for :func:`compiled_vnni`
    three_bit: bool  # that layout is the 3-bit one (3-bit codes, groups of 16 in pairs)


FP32_ONLY: ContextVar[bool] = ContextVar("sparsa_spqr_fp32_only", default=False)  # set by fp32_path()


@contextmanager
def fp32_path() -> Iterator[None]:
    """Inside the block, SpQR weights bind (``spqr_bind``, ``bind_linear``, ``LeanLlama``) and run on
    the fp32 path even where the VNNI path fits, and Quant weights on the fp32 tiles even where the
    int8-activation kernel fits; a binding made inside keeps its path after it."""
    token = FP32_ONLY.set(True)
    try:
        yield
    finally:
        FP32_ONLY.reset(token)


def fits_vnni(weight: SpQR) -> bool:
    """Whether the VNNI path can run this weight here: AVX-512 VNNI, codes and second-level codes of
    at most 4 bits, groups of a multiple of 8 columns, second-level runs covering whole tiles."""
    return (HAS_VNNI and weight.bits <= NIBBLE_BITS and weight.stat_bits <= NIBBLE_BITS
            and weight.group_size % VNNI_COLUMNS == 0 and weight.stat_group_size % LANES == 0)


def takes_vnni(weight: SpQR) -> bool:
    """Whether the VNNI path runs this weight now: it fits and :func:`fp32_path` is not in force."""
    return fits_vnni(weight) and not FP32_ONLY.get()


def stat_tiles(codes: torch.Tensor) -> torch.Tensor:
    """[out, G] codes -> [tiles * G * 16] uint8, tile order (rows past ``out`` are 0)."""
    out_features, groups = codes.shape
    tiles = -(-out_features // LANES)
    padded = torch.cat([codes.to(torch.uint8), codes.new_zeros(tiles * LANES - out_features, groups, dtype=torch.uint8)])
    return padded.reshape(tiles, LANES, groups).transpose(1, 2).contiguous().reshape(-1)


def grid(stats: torch.Tensor, vnni: bool) -> np.ndarray:
    """A (step, minimum) grid [T, G, 2] for the kernels: its fp16 bits as int16 for the VNNI ones (half
    the bytes; they widen in registers), fp32 for the fp32 path."""
    return (stats.half().view(torch.int16) if vnni else stats.float()).contiguous().numpy()


def spqr_layout(weight: SpQR, vnni: bool = True) -> SpQRLayout:
    """Rearrange ``weight`` for the kernel (once per weight; see the module docstring): in a VNNI
    layout where ``vnni`` and the weight fits it, else for the fp32 path."""
    out_features, in_features = weight.shape
    nibbles = weight.bits <= NIBBLE_BITS
    n_stats = out_features * weight.groups
    scale_codes = unpack_bits(weight.scale_codes, weight.stat_bits, n_stats).view(out_features, -1)
    zero_codes = unpack_bits(weight.zero_codes, weight.stat_bits, n_stats).view(out_features, -1)
    q, pos, delta = weight.outlier_free_codes()
    rows = weight.outliers()[0]
    vnni = vnni and fits_vnni(weight)
    three_bit = vnni and weight.bits == 3 and weight.group_size == THREE_BIT_GROUP and weight.groups % 2 == 0
    none = np.zeros(0, np.uint8)
    slots, masks, starts, pos, delta = outlier_slots(rows, weight.outlier_rowptr().diff(), pos, delta, out_features)
    return SpQRLayout(
        codes=(vnni3_codes(q) if three_bit else vnni_codes(q, weight.group_size) if vnni else
               tile_codes(q, weight.group_size, nibbles)).numpy(), scale_codes=none if vnni else stat_tiles(scale_codes).numpy(),
        zero_codes=none if vnni else stat_tiles(zero_codes).numpy(),
        stat_codes=stat_tiles(scale_codes | (zero_codes << 4)).numpy() if vnni else none, scale_stats=grid(weight.scale_stats, vnni),
        zero_stats=grid(weight.zero_stats, vnni), perm=weight.permutation().numpy(),
        outlier_slots=slots.numpy(), outlier_masks=masks.numpy(), outlier_starts=starts.numpy(),
        outlier_pos=pos.to(torch.int16 if in_features <= 2**15 else torch.int32).numpy(), outlier_delta=delta.numpy(),
        vnni=vnni, three_bit=three_bit)


def spqr_fp32_layout(weight: SpQR) -> SpQRLayout:
    """:func:`spqr_layout` for the fp32 path (a build of its own: the layout cache keys on it)."""
    return spqr_layout(weight, vnni=False)


@functools.cache
def compiled(group_size: int, nibbles: bool):
    """The tile kernel for one group size and code packing (the step unrolls over the group): units
    of one tile; ``operand = (perm, codes, sc, zc, sstats, zstats, stat_rows, slots, masks, starts, pos,
    delta)``, ``scratch = (xp,)`` the permuted activations."""
    coded_many, coded_one = (tile_group(group_size, n, nibbles, "coded") for n in (TOKEN_CHUNK, 1))
    float_many, float_one = (tile_group(group_size, n, nibbles, "float") for n in (TOKEN_CHUNK, 1))
    chunk, loads = TOKEN_CHUNK, (-(-group_size // 2) if nibbles else group_size)  # 16-byte code loads per group

    @numba.njit(error_model="numpy")
    def prepare(x, operand, scratch):  # pragma: no cover - compiled
        permute(x, operand[0], scratch[0])

    @numba.njit(fastmath=True, error_model="numpy")
    def rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Tiles ``first .. last`` of y[N, M] = x W^T for the layout's arrays (``stat_rows`` = β2)."""
        perm, codes, sc, zc, sstats, zstats, stat_rows, slots, masks, starts, pos, delta = operand
        xp = scratch[0]
        n_tokens, out_features = y.shape
        groups = sstats.shape[1]
        width = groups * group_size
        aligned = stat_rows % LANES == 0
        acc = np.empty(n_tokens * LANES, np.float32)
        s = np.empty(LANES, np.float32)
        z = np.empty(LANES, np.float32)
        for t in range(first, last):
            acc[:] = 0.0
            r0 = t * LANES
            for g in range(groups):
                code_at = (t * groups + g) * loads * LANES
                stat_at = (t * groups + g) * LANES
                x_at = g * group_size
                if aligned:  # the tile's 16 rows share one (step, minimum) pair per statistic
                    run = r0 // stat_rows
                    s_step, s_min = np.float32(sstats[run, g, 0]), np.float32(sstats[run, g, 1])
                    z_step, z_min = np.float32(zstats[run, g, 0]), np.float32(zstats[run, g, 1])
                    n = 0
                    while n + chunk <= n_tokens:
                        coded_many(acc, n * LANES, codes, code_at, xp, n * width + x_at, width,
                                   sc, zc, stat_at, s_step, s_min, z_step, z_min)
                        n += chunk
                    while n < n_tokens:
                        coded_one(acc, n * LANES, codes, code_at, xp, n * width + x_at, width,
                                  sc, zc, stat_at, s_step, s_min, z_step, z_min)
                        n += 1
                else:  # runs end inside the tile: decode s and z lane by lane
                    for lane in range(LANES):
                        run = min(r0 + lane, out_features - 1) // stat_rows
                        s[lane] = np.float32(sc[stat_at + lane]) * sstats[run, g, 0] + sstats[run, g, 1]
                        z[lane] = np.float32(zc[stat_at + lane]) * zstats[run, g, 0] + zstats[run, g, 1]
                    n = 0
                    while n + chunk <= n_tokens:
                        float_many(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, s, z, 0)
                        n += chunk
                    while n < n_tokens:
                        float_one(acc, n * LANES, codes, code_at, xp, n * width + x_at, width, s, z, 0)
                        n += 1
            for n in range(n_tokens):
                outlier_expand(acc, n * LANES, masks, slots[t], slots[t + 1], starts[t], pos, delta, xp, n * width)
            for lane in range(min(LANES, out_features - r0)):
                for n in range(n_tokens):
                    y[n, r0 + lane] = acc[n * LANES + lane]

    return RowKernel(prepare, rows, LANES, permuted_scratch(group_size), prepare_reads=(0,))


@functools.cache
def compiled_vnni(group_size: int, three_bit: bool = False):
    """The VNNI kernels: activations split into three int8 parts per token (22 bits against the
    token's largest magnitude), integer dot products per group, exact in int32; each step covers
    ``GROUP_BLOCK`` groups with the accumulators in registers.

    Returns the :class:`~sparsa.kernels.cpu.calls.RowKernel` (units of one tile; ``operand = (perm,
    codes, stat_codes, sstats, zstats, stat_rows, slots, masks, starts, pos, delta)``)."""
    runs = group_size // VNNI_COLUMNS
    step_groups = 2 if three_bit else 1  # the 3-bit layout stores groups in pairs
    group_bytes = THREE_BIT_PAIR_BYTES // 2 if three_bit else runs * 4 * LANES
    steps = {(g, n): tile_group_vnni(g, runs, n, three_bit) for g in (GROUP_BLOCK, step_groups) for n in (TOKEN_CHUNK, 1)}
    block_many, block_one, group_many, group_one = (steps[GROUP_BLOCK, TOKEN_CHUNK], steps[GROUP_BLOCK, 1],
                                                    steps[step_groups, TOKEN_CHUNK], steps[step_groups, 1])
    chunk, block = TOKEN_CHUNK, GROUP_BLOCK

    @numba.njit(fastmath=True, error_model="numpy")
    def scales(x, step, finite):  # pragma: no cover - compiled
        """Each token's activation step (largest magnitude / X_LEVELS) and whether it is finite."""
        for n in range(x.shape[0]):
            top = np.float32(0.0)
            for k in range(x.shape[1]):
                top = max(top, abs(x[n, k]))
            finite[n] = top < np.inf
            step[n] = top / np.float32(X_LEVELS) if top / np.float32(X_LEVELS) > 0 and finite[n] else np.float32(1.0)

    @numba.njit(fastmath=True, error_model="numpy")
    def quantize(x, perm, step, xp, xq, xs):  # pragma: no cover - compiled
        """Permuted activations ``xp``, their three int8 parts ``xq`` and group sums / step ``xs``."""
        n_tokens, in_features = x.shape
        groups = xs.shape[0] // n_tokens
        width = groups * group_size
        for n in range(n_tokens):
            inv = np.float32(1.0) / step[n]
            row = xp[n * width:(n + 1) * width]
            base = n * X_PARTS * width
            for k in range(in_features):
                row[k] = x[n, perm[k]]
            row[in_features:] = 0.0
            xq[base:base + X_PARTS * width] = 0
            for k in range(in_features):
                q = min(max(np.int32(np.floor(row[k] * inv + np.float32(0.5))), -X_LEVELS), X_LEVELS)
                xq[base + k] = q & 127
                xq[base + width + k] = (q >> 7) & 127
                xq[base + 2 * width + k] = q >> 14
            for g in range(groups):
                total = np.float32(0.0)
                for k in range(g * group_size, (g + 1) * group_size):
                    total += row[k]
                xs[n * groups + g] = total * inv

    @numba.njit(fastmath=True, error_model="numpy")
    def tile(t, codes, stat_codes, grids_s, grids_z, stat_rows, slots, masks, starts, pos, delta, xp, xq, xs, step, finite, y,
             acc):  # pragma: no cover - compiled
        """Rows ``16 t .. 16 t + 16`` of ``y`` for every token."""
        n_tokens, out_features = y.shape
        groups = xs.shape[0] // n_tokens
        width = groups * group_size
        acc[:] = 0.0
        r0 = t * LANES
        grid0 = (r0 // stat_rows) * groups * 2
        tail = groups - groups % block
        for g in range(groups):  # blocks of GROUP_BLOCK groups, then the rest one step (1 or 2 groups) at a time
            if (g % block and g < tail) or (g >= tail and (g - tail) % step_groups):
                continue
            code_at = (t * groups + g) * group_bytes
            stat_at = (t * groups + g) * LANES
            n = 0
            while n + chunk <= n_tokens:
                x0, s0 = n * X_PARTS * width + g * group_size, n * groups + g
                if g < tail:
                    block_many(acc, n * LANES, codes, code_at, xq, x0, width, X_PARTS * width, xs, s0, groups,
                               stat_codes, stat_at, grids_s, grids_z, grid0 + 2 * g)
                else:
                    group_many(acc, n * LANES, codes, code_at, xq, x0, width, X_PARTS * width, xs, s0, groups,
                               stat_codes, stat_at, grids_s, grids_z, grid0 + 2 * g)
                n += chunk
            while n < n_tokens:
                x0, s0 = n * X_PARTS * width + g * group_size, n * groups + g
                if g < tail:
                    block_one(acc, n * LANES, codes, code_at, xq, x0, width, X_PARTS * width, xs, s0, groups,
                              stat_codes, stat_at, grids_s, grids_z, grid0 + 2 * g)
                else:
                    group_one(acc, n * LANES, codes, code_at, xq, x0, width, X_PARTS * width, xs, s0, groups,
                              stat_codes, stat_at, grids_s, grids_z, grid0 + 2 * g)
                n += 1
        for n in range(n_tokens):  # back to activation units, then the outlier corrections
            for lane in range(LANES):
                acc[n * LANES + lane] *= step[n]
            outlier_expand(acc, n * LANES, masks, slots[t], slots[t + 1], starts[t], pos, delta, xp, n * width)
        for lane in range(min(LANES, out_features - r0)):
            for n in range(n_tokens):
                y[n, r0 + lane] = acc[n * LANES + lane] if finite[n] else np.nan

    @numba.njit(error_model="numpy")
    def prepare(x, operand, scratch):  # pragma: no cover - compiled
        step, finite, xp, xq, xs = scratch
        scales(x, step, finite)
        quantize(x, operand[0], step, xp, xq, xs)

    @numba.njit(fastmath=True, error_model="numpy")
    def rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Tiles ``first .. last`` of y[N, M] = x W^T; a token with inf/nan activations gets nan outputs."""
        perm, codes, stat_codes, sstats, zstats, stat_rows, slots, masks, starts, pos, delta = operand
        step, finite, xp, xq, xs = scratch
        grids_s, grids_z = sstats.reshape(-1), zstats.reshape(-1)
        acc = np.empty(x.shape[0] * LANES, np.float32)
        for t in range(first, last):
            tile(t, codes, stat_codes, grids_s, grids_z, stat_rows, slots, masks, starts, pos, delta, xp, xq, xs, step,
                 finite, y, acc)

    def scratch_for(operand: tuple, tokens: int) -> tuple:
        """``(step, finite, xp, xq, xs)``: per token its step and finiteness, the permuted activations,
        their three int8 parts (token ``n``, part ``p`` at ``(n * 3 + p) * width``) and group sums."""
        groups = operand[3].shape[1]
        width = groups * group_size
        return (np.empty(tokens, np.float32), np.empty(tokens, np.bool_), np.empty(tokens * width, np.float32),
                np.empty(tokens * X_PARTS * width, np.int8), np.empty(tokens * groups, np.float32))

    return RowKernel(prepare, rows, LANES, scratch_for, prepare_reads=(0,))


def permuted_scratch(group_size: int):
    """``scratch_for`` of the fp32 tile kernel: ``(xp,)``, ``tokens`` rows of ``G * group_size`` fp32."""

    def scratch_for(operand: tuple, tokens: int) -> tuple:
        return (np.empty(tokens * operand[4].shape[1] * group_size, np.float32),)

    return scratch_for


@numba.njit(error_model="numpy")
def permute(x, perm, xp):  # pragma: no cover - compiled
    """``xp`` (N flat rows of ``width >= in``) = the columns of ``x [N, in]`` in ``perm`` order, zeros past ``in``."""
    n_tokens, in_features = x.shape
    width = xp.shape[0] // n_tokens
    for n in range(n_tokens):
        for k in range(in_features):
            xp[n * width + k] = x[n, perm[k]]
        xp[n * width + in_features:(n + 1) * width] = 0.0


WIDE_ONLY: ContextVar[bool] = ContextVar("sparsa_spqr_wide_only", default=False)  # set by wide_activations()


@contextmanager
def wide_activations() -> Iterator[None]:
    """Inside the block, SpQR weights on the VNNI path bind to the 22-bit kernel at every token count,
    not to int8 activations at decode (tests compare paths whose activations differ by less than an
    int8 step); a binding made inside keeps its kernel after it."""
    token = WIDE_ONLY.set(True)
    try:
        yield
    finally:
        WIDE_ONLY.reset(token)


def takes_q8(weight: SpQR, tokens: int) -> bool:
    """Whether ``tokens`` tokens of this weight run on int8 activations (:mod:`sparsa.kernels.cpu.spqr_q8`):
    the VNNI path runs it (:func:`takes_vnni`), ``tokens`` is a decode's (at most ``spqr_q8.TOKENS``)
    and :func:`wide_activations` is not in force."""
    return tokens <= spqr_q8.TOKENS and takes_vnni(weight) and not WIDE_ONLY.get()


def spqr_step(weight: SpQR, tokens: int = 1) -> tuple:
    """``(RowKernel, operand)`` for ``tokens`` tokens: on the VNNI path (as :func:`takes_vnni` decides now)
    the int8-activation kernel at decode (:func:`takes_q8`) or the 22-bit one, else the fp32 tile
    kernel; and the arrays it reads, the same for both VNNI kernels."""
    lay = cached_layout(weight, spqr_fp32_layout if FP32_ONLY.get() else spqr_layout)
    kernel = (spqr_q8.compiled(weight.group_size, lay.three_bit) if lay.vnni and takes_q8(weight, tokens) else
              compiled_vnni(weight.group_size, lay.three_bit) if lay.vnni else
              compiled(weight.group_size, weight.bits <= NIBBLE_BITS))
    codes = (lay.stat_codes,) if lay.vnni else (lay.scale_codes, lay.zero_codes)
    return kernel, (lay.perm, lay.codes, *codes, lay.scale_stats, lay.zero_stats, weight.stat_group_size,
                    lay.outlier_slots, lay.outlier_masks, lay.outlier_starts, lay.outlier_pos, lay.outlier_delta)


spqr_bind = bind_step(spqr_step)  # x -> Y = X Wᵀ + b with the layout and kernel looked up once


@register_linear_kernel("spqr", "cpu", (torch.float32,), bind=spqr_bind, step=spqr_step)
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
    return spqr_bind(weight, bias)(x)
