"""N:M ``Y = X Wᵀ + b`` on CPU: the Bitmap kernel on the N:M pattern's presence mask.

An N:M weight is an unstructured one whose kept entries happen to fall N in every M columns, and
its slots are stored row-major in column order (positions strictly increase in a group), as the
Bitmap kernel reads its values. So once per weight (:func:`nm_layout`, cached) every slot's
column is marked in a presence mask, cut into 16-bit words (:func:`~sparsa.kernels.cpu.bitmap.mask_words`;
a slot that holds a zero is marked too), and the values are widened to fp32 (exact for fp16 and
bf16); the product is :data:`~sparsa.kernels.cpu.bitmap.BITMAP`'s: ``vexpandps`` per word, the
sums in registers, in the compiled decode step and per call alike. A row-by-row gather over the
slots ran SmolLM2 2:4 at 0.76x dense fp32 (batch 1) and 0.45x (batch 8).
"""

from dataclasses import dataclass

import numpy as np
import torch

from sparsa.formats.nm import NM
from sparsa.kernels.cpu.bitmap import BITMAP, mask_words
from sparsa.kernels.cpu.calls import bind_step
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.layouts import cached_layout


@dataclass(frozen=True)
class NMLayout:
    """An NM weight as the Bitmap kernel reads it (numpy)."""

    words: np.ndarray  # [out, ceil(in / 16)] int32, 16 presence bits per word (bit l: column 16 w + l)
    rowptr: np.ndarray  # [out + 1] int64, row r's slots at rowptr[r] .. rowptr[r + 1]
    values: np.ndarray  # [slots] fp32, row-major, column order


def nm_layout(weight: NM) -> NMLayout:
    """The presence mask of every slot and the fp32 values (once per weight)."""
    out_features, in_features = weight.shape
    kept = torch.zeros(out_features, in_features // weight.m, weight.m, dtype=torch.bool)
    kept.scatter_(-1, weight.positions(), True)
    words = mask_words(kept.view(out_features, in_features))
    return NMLayout(words.words, words.rowptr, weight.values.to(torch.float32).reshape(-1).contiguous().numpy())


def nm_step(weight: NM, tokens: int = 1) -> tuple:
    """``(RowKernel, operand)``: :data:`~sparsa.kernels.cpu.bitmap.BITMAP` and the layout's arrays."""
    lay = cached_layout(weight, nm_layout)
    return BITMAP, (lay.words, lay.rowptr, lay.values)


nm_bind = bind_step(nm_step)  # x -> Y = X Wᵀ + b with the layout looked up once


@register_linear_kernel("nm", "cpu", (torch.float32,), bind=nm_bind, step=nm_step)
def nm_linear(x: torch.Tensor, weight: NM, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an ``NM`` weight (fp32, fp16 or bf16 values) and fp32 activations on CPU
    (no autograd).

    Args:
        x: [..., in] fp32; weight: NM W [out, in]; bias: [out] or None.
    Returns:
        [..., out] fp32.
    """
    return nm_bind(weight, bias)(x)
