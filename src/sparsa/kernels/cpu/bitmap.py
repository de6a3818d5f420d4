"""Bitmap (unstructured) ``Y = X Wᵀ + b`` on CPU for decoding: AVX-512 expand-loads, no dense W.

Once per weight (:func:`bitmap_layout`, cached) each row's presence bits are cut into 16-bit
words (the row padded to a multiple of 16 columns) and each row's first value located. Per row
and run of up to four tokens, every word takes one step (:func:`row_step`): ``vexpandps`` loads
the word's kept values into the lanes its set bits name (zeros elsewhere), once for the run,
one FMA per token meets its 16 activations, and the popcount advances the value pointer. Each
token's 16 lanes are summed at the row's end. fp32 values only (others take the reference).
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsa.errors import SparsaError
from sparsa.formats.bitmap import Bitmap
from sparsa.kernels.cpu.calls import RowKernel, bind_step, pad_rows
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.dispatch import register_linear_kernel

WORD = 16  # columns per mask word: one AVX-512 register of fp32
_F32, _I16 = ir.FloatType(), ir.IntType(16)
_VF, _VB = ir.VectorType(_F32, WORD), ir.VectorType(ir.IntType(1), WORD)


@functools.cache
def row_step(tokens: int):
    """The step for one row and ``tokens`` tokens (compiled per count):
    ``step(out, words, w_at, n_words, values, at, x, x_at, x_stride)`` sets ``out[j]`` to row · token
    ``j`` for ``j < tokens``: per 16-bit word (``words[w_at + w]``), ``vexpandps`` loads the word's kept
    values from ``values[at]`` on into the lanes its set bits name (zeros elsewhere), once for all
    the tokens, one FMA per token meets its 16 activations (``x[x_at + j * x_stride + 16 w]``), and
    the popcount advances ``at``; the ``tokens`` accumulators stay in registers over the row."""

    def codegen(context, builder, sig, args):
        out_a, words_a, w_at, n_words, val_a, at_i, x_a, x_at, x_stride = args
        i64 = ir.IntType(64)

        def data(i, a):
            return context.make_array(sig.args[i])(context, builder, a).data

        words_d, val_d, x_d = data(1, words_a), data(4, val_a), data(6, x_a)
        expand = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_F32.as_pointer(), _VB, _VF]),
                                                "llvm.masked.expandload.v16f32")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * 3), "llvm.fma.v16f32")
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")
        zero = ir.Constant(_VF, [0.0] * WORD)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(tokens)]
        cursor = cgutils.alloca_once_value(builder, at_i)
        rows = [builder.add(x_at, builder.mul(x_stride, ir.Constant(i64, j))) for j in range(tokens)]
        with cgutils.for_range(builder, n_words) as loop:
            word = builder.trunc(builder.load(builder.gep(words_d, [builder.add(w_at, loop.index)])), _I16)
            at = builder.load(cursor)
            w = builder.call(expand, [builder.gep(val_d, [at]), builder.bitcast(word, _VB), zero])
            column = builder.mul(loop.index, ir.Constant(i64, WORD))
            for j in range(tokens):
                xv = builder.load(builder.bitcast(builder.gep(x_d, [builder.add(rows[j], column)]), _VF.as_pointer()),
                                  align=4)
                builder.store(builder.call(fma, [w, xv, builder.load(accs[j])]), accs[j])
            builder.store(builder.add(at, builder.zext(builder.call(popcount, [word]), i64)), cursor)
        out_d = data(0, out_a)
        for j in range(tokens):
            v = builder.load(accs[j])
            total = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
            for lane in range(1, WORD):
                total = builder.fadd(total, builder.extract_element(v, ir.Constant(ir.IntType(32), lane)))
            builder.store(total, builder.gep(out_d, [ir.Constant(i64, j)]))
        return context.get_dummy_value()

    @intrinsic
    def step(typingctx, out, words, w_at, n_words, values, at, x, x_at, x_stride):
        return types.void(out, words, w_at, n_words, values, at, x, x_at, x_stride), codegen

    return step


@dataclass(frozen=True)
class BitmapLayout:
    """A Bitmap weight arranged for :func:`bitmap_rows` (numpy views)."""

    words: np.ndarray  # [out, ceil(in / 16)] int32, 16 presence bits per word (bit l: column 16 w + l)
    rowptr: np.ndarray  # [out + 1] int64, row r's values at rowptr[r] .. rowptr[r + 1]


def bitmap_layout(weight: Bitmap) -> BitmapLayout:
    """Rearrange ``weight``'s mask into per-row 16-bit words (once per weight)."""
    return mask_words(weight.kept().view(weight.shape))


def mask_words(kept: torch.Tensor) -> BitmapLayout:
    """The words and row pointers of a presence mask ``kept: [out, in]`` bool (any format whose kept
    values are stored row-major in column order runs :data:`BITMAP` on them)."""
    out_features, in_features = kept.shape
    width = -(-in_features // WORD) * WORD
    padded = torch.cat([kept, kept.new_zeros(out_features, width - in_features)], dim=1)
    words = (padded.view(out_features, -1, WORD).int() << torch.arange(WORD, dtype=torch.int32)).sum(-1, dtype=torch.int32)
    rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), kept.sum(1).cumsum(0)])
    return BitmapLayout(words=words.numpy(), rowptr=rowptr.numpy())


CHUNK = 4  # tokens per row step: each word's values are expanded once for these
_many, _one = row_step(CHUNK), row_step(1)


@numba.njit(error_model="numpy")
def bitmap_prepare(x, operand, scratch):  # pragma: no cover - compiled
    """The activations zero-padded to whole words."""
    pad_rows(x, scratch[0])


@numba.njit(fastmath=True, error_model="numpy")
def bitmap_rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
    """Rows ``first .. last`` of y[N, M] = x W^T from the layout and the kept values
    (``operand = (words, rowptr, values)``, ``scratch = (xp,)``)."""
    words, rowptr, values = operand
    xp = scratch[0]
    n_tokens = x.shape[0]
    n_words = words.shape[1]
    width = n_words * WORD
    flat = words.reshape(-1)
    out = np.empty(CHUNK, np.float32)
    for r in range(first, last):
        n = 0
        while n < n_tokens:
            count = CHUNK if n + CHUNK <= n_tokens else 1
            if count == CHUNK:
                _many(out, flat, r * n_words, n_words, values, rowptr[r], xp, n * width, width)
            else:
                _one(out, flat, r * n_words, n_words, values, rowptr[r], xp, n * width, width)
            for j in range(count):
                y[n + j, r] = out[j]
            n += count


def bitmap_scratch(operand: tuple, tokens: int) -> tuple:
    """``(xp,)``: ``tokens`` rows of the padded width."""
    return (np.empty(tokens * operand[0].shape[1] * WORD, np.float32),)


BITMAP = RowKernel(bitmap_prepare, bitmap_rows, 1, bitmap_scratch)


def bitmap_step(weight: Bitmap, tokens: int = 1) -> tuple:
    """``(RowKernel, operand)``: :data:`BITMAP` and the arrays it reads."""
    if weight.values.dtype != torch.float32:
        raise SparsaError(f"the Bitmap CPU kernel needs fp32 values, got {weight.values.dtype}")
    lay = cached_layout(weight, bitmap_layout)
    return BITMAP, (lay.words, lay.rowptr, weight.values.contiguous().numpy())


bitmap_bind = bind_step(bitmap_step)  # x -> Y = X Wᵀ + b with the layout looked up once


@register_linear_kernel("bitmap", "cpu", (torch.float32,), accepts=lambda w: w.values.dtype == torch.float32,
                        bind=bitmap_bind, step=bitmap_step)
def bitmap_linear(x: torch.Tensor, weight: Bitmap, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an fp32 ``Bitmap`` weight and fp32 activations on CPU (no autograd).

    Args:
        x: [..., in] fp32; weight: Bitmap W [out, in] with fp32 values; bias: [out] or None.
    Returns:
        [..., out] fp32.
    """
    return bitmap_bind(weight, bias)(x)
