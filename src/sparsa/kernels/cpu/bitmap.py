"""Bitmap (unstructured) ``Y = X Wᵀ + b`` on CPU for decoding: AVX-512 expand-loads, no dense W.

Once per weight (:func:`bitmap_layout`, cached) each row's presence bits are cut into 16-bit
words (the row padded to a multiple of 16 columns) and each row's first value located. Per row
and token, every non-empty word takes one step: ``vexpandps`` loads the word's kept values
into the lanes its set bits name (zeros elsewhere), one FMA meets the 16 activations, and the
popcount advances the value pointer. The 16 lanes are summed at the row's end. fp32 values
only (others take the reference).
"""

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
from sparsa.kernels.cpu.calls import bind_step, zero_padded_rows
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.dispatch import register_linear_kernel

WORD = 16  # columns per mask word: one AVX-512 register of fp32
_F32, _I16 = ir.FloatType(), ir.IntType(16)
_VF, _VB = ir.VectorType(_F32, WORD), ir.VectorType(ir.IntType(1), WORD)


@intrinsic
def expand_fma(typingctx, acc, values, at, bits, x, x_at):
    """``acc[l] += v[l] * x[x_at + l]`` for the 16 lanes, ``v`` the values from ``values[at]`` on
    expanded into the lanes whose bit is set in ``bits`` (0 elsewhere); returns how many were read."""

    def codegen(context, builder, sig, args):
        acc_a, val_a, at_i, bits_i, x_a, x_i = args

        def data(i, a):
            return context.make_array(sig.args[i])(context, builder, a).data

        word = builder.trunc(bits_i, _I16)
        expand = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_F32.as_pointer(), _VB, _VF]),
                                                "llvm.masked.expandload.v16f32")
        w = builder.call(expand, [builder.gep(data(1, val_a), [at_i]), builder.bitcast(word, _VB),
                                  ir.Constant(_VF, [0.0] * WORD)])
        xv = builder.load(builder.bitcast(builder.gep(data(4, x_a), [x_i]), _VF.as_pointer()), align=4)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * 3), "llvm.fma.v16f32")
        ptr = builder.bitcast(data(0, acc_a), _VF.as_pointer())
        builder.store(builder.call(fma, [w, xv, builder.load(ptr, align=4)]), ptr, align=4)
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")
        return builder.zext(builder.call(popcount, [word]), ir.IntType(64))

    return types.int64(acc, values, at, bits, x, x_at), codegen


@dataclass(frozen=True)
class BitmapLayout:
    """A Bitmap weight arranged for :func:`bitmap_rows` (numpy views)."""

    words: np.ndarray  # [out, ceil(in / 16)] int32, 16 presence bits per word (bit l: column 16 w + l)
    rowptr: np.ndarray  # [out + 1] int64, row r's values at rowptr[r] .. rowptr[r + 1]


def bitmap_layout(weight: Bitmap) -> BitmapLayout:
    """Rearrange ``weight``'s mask into per-row 16-bit words (once per weight)."""
    out_features, in_features = weight.shape
    kept = weight.kept().view(out_features, in_features)
    width = -(-in_features // WORD) * WORD
    padded = torch.cat([kept, kept.new_zeros(out_features, width - in_features)], dim=1)
    words = (padded.view(out_features, -1, WORD).int() << torch.arange(WORD, dtype=torch.int32)).sum(-1, dtype=torch.int32)
    rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), kept.sum(1).cumsum(0)])
    return BitmapLayout(words=words.numpy(), rowptr=rowptr.numpy())


@numba.njit(parallel=True, fastmath=True)
def bitmap_rows(x, words, rowptr, values, y, tasks):  # pragma: no cover - compiled
    """y[N, M] = x W^T from the layout and the kept values."""
    n_tokens = x.shape[0]
    out_features, n_words = words.shape
    width = n_words * WORD
    xp = zero_padded_rows(x, width)
    per_task = (out_features + tasks - 1) // tasks
    for task in numba.prange(tasks):
        acc = np.empty(WORD, np.float32)
        for r in range(task * per_task, min(out_features, (task + 1) * per_task)):
            for n in range(n_tokens):
                acc[:] = 0.0
                at = rowptr[r]
                for w in range(n_words):
                    bits = words[r, w]
                    if bits:
                        at += expand_fma(acc, values, at, bits, xp, n * width + w * WORD)
                total = np.float32(0.0)
                for lane in range(WORD):
                    total += acc[lane]
                y[n, r] = total


def bitmap_step(weight: Bitmap, tokens: int = 1) -> tuple:
    """``(kernel, operand)``: :func:`bitmap_rows` and the arrays it reads (``kernel(x, *operand, y, tasks)``)."""
    if weight.values.dtype != torch.float32:
        raise SparsaError(f"the Bitmap CPU kernel needs fp32 values, got {weight.values.dtype}")
    lay = cached_layout(weight, bitmap_layout)
    return bitmap_rows, (lay.words, lay.rowptr, weight.values.contiguous().numpy())


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
