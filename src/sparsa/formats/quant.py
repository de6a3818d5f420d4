"""``Quant``: plain b-bit group quantization with a floating-point scale and minimum per group.

Each row of ``W: [out, in]`` is cut into groups of ``group_size`` consecutive input columns;
group ``(i, j)`` stores ``scale[i, j]`` and ``minimum[i, j]`` (fp16) and every weight in it a
``bits``-bit code ``q``, so ``W ≈ q * scale + minimum`` (the GGUF Q4_1 convention: a float
minimum rather than an integer zero-point). Storage: ``bits + 32 / group_size`` bits/param.
"""

from dataclasses import dataclass

import torch

from sparsa.formats.base import Format, check, check_array
from sparsa.formats.bitpack import pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.registry import register_format
from sparsa.errors import SparsaError

MIN_BITS, MAX_BITS = 2, 8


def check_group_size(in_features: int, group_size: int, where: str) -> None:
    """Raise unless ``group_size`` is positive and divides ``in_features``."""
    if group_size <= 0 or in_features % group_size:
        hint = next((g for g in (128, 64, 32, 16) if in_features % g == 0), in_features)
        raise SparsaError(f"{where}: in_features={in_features} % group_size={group_size} != 0; "
                          f"try --group-size {hint}")


def minmax_quantize(W: torch.Tensor, bits: int, group_size: int):
    """Asymmetric min-max round-to-nearest over groups of input columns.

    Args:
        W: [out, in] float weight; ``in % group_size == 0``.
        bits: 2..8.
        group_size: input columns per group.
    Returns:
        codes [out, in] uint8 in [0, 2**bits), scale [out, in/g] fp16, minimum [out, in/g] fp16.
    """
    out_features, in_features = W.shape
    Wg = W.float().reshape(out_features, in_features // group_size, group_size)
    lo, hi = Wg.amin(dim=-1), Wg.amax(dim=-1)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).to(torch.float16)
    minimum = lo.to(torch.float16)
    # A constant (or fp16-underflowing) group stores scale 0: every code decodes to the minimum.
    step = torch.where(scale > 0, scale.float(), torch.ones_like(lo))
    codes = torch.round((Wg - minimum.float()[..., None]) / step[..., None]).clamp_(0, qmax)
    return codes.to(torch.uint8).reshape(out_features, in_features), scale, minimum


@register_format("quant")
@dataclass(frozen=True, eq=False)
class Quant(Format):
    """Group-quantized weight.

    Attributes:
        shape: (out, in).
        bits: bits per code, 2..8.
        group_size: input columns per group; divides ``in``.
        codes: [ceil(out * in * bits / 8)] uint8, codes packed row-major (see ``bitpack``).
        scale: [out, in / group_size] fp16.
        minimum: [out, in / group_size] fp16.
    """

    ARRAYS = ("codes", "scale", "minimum")

    bits: int
    group_size: int
    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, bits: int, group_size: int, where: str = "weight") -> "Quant":
        """Quantize ``W: [out, in]`` round-to-nearest with min-max groups."""
        if not MIN_BITS <= bits <= MAX_BITS:
            raise SparsaError(f"{where}: --bits {bits} is outside {MIN_BITS}..{MAX_BITS}")
        check_group_size(W.shape[1], group_size, where)
        codes, scale, minimum = minmax_quantize(W, bits, group_size)
        if not (torch.isfinite(scale).all() and torch.isfinite(minimum).all()):
            raise SparsaError(f"{where}: weights beyond the fp16 range (|w| > 65504) or non-finite; "
                              "cannot store fp16 group statistics")
        return cls(shape=tuple(W.shape), bits=bits, group_size=group_size,
                   codes=pack_bits(codes, bits), scale=scale, minimum=minimum)

    def unpacked_codes(self) -> torch.Tensor:
        """Codes as [out, in] uint8."""
        return unpack_bits(self.codes, self.bits, self.numel).view(self.shape)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out_features, in_features = self.shape
        groups = in_features // self.group_size
        q = self.unpacked_codes().view(out_features, groups, self.group_size).float()
        W = q * self.scale.float()[..., None] + self.minimum.float()[..., None]
        return W.view(self.shape).to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(isinstance(self.bits, int) and MIN_BITS <= self.bits <= MAX_BITS, where,
              f"bits={self.bits!r} outside {MIN_BITS}..{MAX_BITS}")
        check(isinstance(self.group_size, int), where, f"group_size={self.group_size!r} is not an integer")
        check_group_size(self.shape[1], self.group_size, where)
        groups = (self.shape[0], self.shape[1] // self.group_size)
        check_array(self.codes, where, "codes", (torch.uint8,), (packed_nbytes(self.numel, self.bits),))
        check_array(self.scale, where, "scale", (torch.float16,), groups)
        check_array(self.minimum, where, "minimum", (torch.float16,), groups)
        check(bool(torch.isfinite(self.scale).all() and torch.isfinite(self.minimum).all()), where,
              "scale or minimum holds inf/nan")
