"""Quant ``Y = X Wᵀ + b`` on CPU: 16-row tiles dequantized in AVX-512 registers, never the whole W.

Weights with codes of at most 4 bits and groups of a multiple of 32 columns run, on AVX2 CPUs, the
int8-activation kernel of :mod:`sparsa.kernels.cpu.q8` instead at decode, up to :data:`Q8_TOKENS`
tokens per call (batch 1 to 3; the tile kernel shares each dequantized tile among four tokens and
is the faster from four) (llama.cpp's scheme: activations rounded to int8 per block of 32, exact integer
dot products; some 1.7x the tile kernel's throughput); longer inputs and everything inside
:func:`~sparsa.kernels.cpu.spqr.fp32_path` take the fp32 tiles below.

Once per weight (:func:`quant_layout`, cached while the weight is unchanged) the codes go into
the tile layout of :mod:`sparsa.kernels.cpu.tiles` (two per byte up to 4 bits; the short last
group, when ``group_size`` does not divide ``in``, padded with zero codes) and the fp16 scale
and minimum of every (row, group) into the same tile order, kept as fp16 (their int16 bits:
numba has no fp16) and widened in registers. Per group one "half" step adds, for up to four
tokens at a time, ``sum_k (q * s + m) * x`` (each weight exactly as ``Quant.to_dense`` forms it);
activations past ``in`` are zero, so the padding adds nothing. Batch > 1 is one call.
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch

from sparsa.formats.quant import Quant, group_count, pad_groups
from sparsa.kernels.cpu.calls import RowKernel, bind_step, check_activations, pad_rows
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.cpu import q8
from sparsa.kernels.cpu.spqr import FP32_ONLY, TOKEN_CHUNK
from sparsa.kernels.cpu.tiles import LANES, NIBBLE_BITS, tile_codes, tile_group
from sparsa.kernels.dispatch import register_linear_kernel


@dataclass(frozen=True)
class QuantLayout:
    """A Quant weight arranged for :func:`compiled` (numpy views)."""

    codes: np.ndarray  # [tiles * G * loads * 16] uint8, tile layout over G * group_size columns (q8: quad layout)
    scale: np.ndarray  # [tiles * G * 16] int16, fp16 bits, tile order (q8: quad order)
    minimum: np.ndarray  # [tiles * G * 16] int16, fp16 bits, tile order (q8: quad order; empty if symmetric)


def half_tiles(stat: torch.Tensor) -> np.ndarray:
    """[out, G] fp16 -> [tiles * G * 16] int16 (the fp16 bits), tile order; rows past ``out`` are 0."""
    out_features, groups = stat.shape
    tiles = -(-out_features // LANES)
    bits = torch.cat([stat.view(torch.int16), stat.new_zeros(tiles * LANES - out_features, groups).view(torch.int16)])
    return bits.reshape(tiles, LANES, groups).transpose(1, 2).contiguous().reshape(-1).numpy()


def quant_layout(weight: Quant) -> QuantLayout:
    """Rearrange ``weight`` for the kernel (once per weight)."""
    q = pad_groups(weight.unpacked_codes(), weight.group_size)  # [out, G, g], short group padded
    q = q.reshape(weight.shape[0], -1)
    q[:, weight.shape[1]:] = 0  # padded columns meet zero activations; zero codes keep it obvious
    return QuantLayout(codes=tile_codes(q, weight.group_size, weight.bits <= NIBBLE_BITS).numpy(),
                       scale=half_tiles(weight.scale), minimum=half_tiles(weight.group_minimum()))


@functools.cache
def compiled(group_size: int, nibbles: bool) -> RowKernel:
    """The tile kernel for one group size and code packing: units of 16 rows (a tile);
    ``operand = (codes, scale, minimum, groups)``, ``scratch = (xp,)`` the zero-padded activations."""
    many, one = (tile_group(group_size, n, nibbles, "half") for n in (TOKEN_CHUNK, 1))
    loads = -(-group_size // 2) if nibbles else group_size
    chunk = TOKEN_CHUNK

    @numba.njit(error_model="numpy")
    def prepare(x, operand, scratch):  # pragma: no cover - compiled
        pad_rows(x, scratch[0])

    @numba.njit(fastmath=True, error_model="numpy")
    def rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Tiles ``first .. last`` of y[N, M] = x W^T."""
        codes, scale, minimum, groups = operand
        xp = scratch[0]
        n_tokens, out_features = y.shape
        width = groups * group_size
        acc = np.empty(n_tokens * LANES, np.float32)
        for t in range(first, last):
            acc[:] = 0.0
            for g in range(groups):
                code_at = (t * groups + g) * loads * LANES
                stat_at = (t * groups + g) * LANES
                n = 0
                while n + chunk <= n_tokens:
                    many(acc, n * LANES, codes, code_at, xp, n * width + g * group_size, width, scale, minimum,
                         stat_at)
                    n += chunk
                while n < n_tokens:
                    one(acc, n * LANES, codes, code_at, xp, n * width + g * group_size, width, scale, minimum,
                        stat_at)
                    n += 1
            r0 = t * LANES
            for lane in range(min(LANES, out_features - r0)):
                for n in range(n_tokens):
                    y[n, r0 + lane] = acc[n * LANES + lane]

    def scratch_for(operand: tuple, tokens: int) -> tuple:
        return (np.empty(tokens * operand[3] * group_size, np.float32),)

    return RowKernel(prepare, rows, LANES, scratch_for)


Q8_TOKENS = 3  # up to this many tokens per call take the int8-activation kernel where it fits: it runs one
# token per pass over the codes, the tile kernel four; a 1536x576 4-bit g32 product took 24/39/60 us at 1/2/3
# tokens against the tiles' 34/58/77, and 88/167 us at 4/8 against the tiles' 52/97 (2 threads, Zen 4)


def fits_q8(weight: Quant, tokens: int = 1) -> bool:
    """Whether the int8-activation kernel (:mod:`sparsa.kernels.cpu.q8`) runs this weight for
    ``tokens`` tokens: at most :data:`Q8_TOKENS` (decode at small batch; longer inputs, prefill and
    evaluation, keep fp32 activations), AVX2, codes of at most 4 bits, groups of a multiple of 32 columns,
    and :func:`fp32_path` not in force."""
    return tokens <= Q8_TOKENS and q8.HAS_AVX2 and weight.bits <= NIBBLE_BITS and weight.group_size % q8.BLOCK == 0 and not FP32_ONLY.get()


def q8_layout(weight: Quant) -> QuantLayout:
    """Rearrange ``weight`` for the int8-activation kernel (once per weight): codes in quads of rows."""
    q = pad_groups(weight.unpacked_codes(), weight.group_size).reshape(weight.shape[0], -1)
    q[:, weight.shape[1]:] = 0
    minimum = np.empty(0, np.int16) if weight.symmetric else q8.quad_stats(weight.minimum).numpy()
    return QuantLayout(codes=q8.row_codes(q).numpy(), scale=q8.quad_stats(weight.scale).numpy(), minimum=minimum)


def quant_step(weight: Quant, tokens: int = 1) -> tuple:
    """``(RowKernel, operand)`` for ``tokens`` tokens: the int8-activation kernel where it fits
    (:func:`fits_q8`), else the fp32 tile kernel, and the arrays it reads."""
    if fits_q8(weight, tokens):
        lay = cached_layout(weight, q8_layout)
        blocks = group_count(weight.shape[1], weight.group_size) * weight.group_size // q8.BLOCK
        kernel = q8.compiled(weight.group_size // q8.BLOCK, weight.implied_zero)
        return kernel, (lay.codes, lay.scale, lay.minimum, blocks)
    lay = cached_layout(weight, quant_layout)
    kernel = compiled(weight.group_size, weight.bits <= NIBBLE_BITS)
    return kernel, (lay.codes, lay.scale, lay.minimum, group_count(weight.shape[1], weight.group_size))


quant_bind = bind_step(quant_step)  # x -> Y = X Wᵀ + b with the layout and kernel looked up once


@register_linear_kernel("quant", "cpu", (torch.float32,), bind=quant_bind, step=quant_step)
def quant_linear(x: torch.Tensor, weight: Quant, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for a ``Quant`` weight and fp32 activations on CPU (no autograd).

    Args:
        x: [..., in] fp32.
        weight: Quant W [out, in].
        bias: [out] or None.
    Returns:
        [..., out] fp32.
    """
    check_activations(x, weight, torch.float32)
    return quant_bind(weight, bias)(x)
