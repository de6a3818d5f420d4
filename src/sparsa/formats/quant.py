"""``Quant``: plain b-bit group quantization with a floating-point scale (and minimum) per group.

Each row of ``W: [out, in]`` is cut into groups of ``group_size`` consecutive input columns (the
last group is shorter when ``group_size`` does not divide ``in``, as in GPTQ); group ``(i, j)``
stores ``scale[i, j]`` and ``minimum[i, j]`` (fp16) and every weight in it a ``bits``-bit code
``q``, so ``W ≈ q * scale + minimum`` (the GGUF Q4_1 convention: a float minimum rather than an
integer zero-point). Storage: ``bits + 32 / group_size`` bits/param.

Symmetric weights store no minimum: it is ``-2**(bits-1) * scale``, so ``W ≈ (q - 2**(bits-1)) *
scale`` (the GGUF Q4_0 convention), ``bits + 16 / group_size`` bits/param. Their scale is the
group's value of largest magnitude over ``-2**(bits-1)`` (so it may be negative): that value gets
code 0 exactly, and the grid reaches ``2**(bits-1) - 1`` steps the other way.
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


def minmax_stats(Wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max grid of each group along the last axis.

    Args:
        Wg: [..., g] float weights, one group per last-axis row.
    Returns:
        scale, minimum: [...] fp16; a constant (or fp16-underflowing) group gets scale 0.
    """
    lo, hi = Wg.float().amin(dim=-1), Wg.float().amax(dim=-1)
    return ((hi - lo) / (2**bits - 1)).to(torch.float16), lo.to(torch.float16)


def symmetric_minimum(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The minimum a symmetric grid implies: ``-2**(bits-1) * scale`` (fp16, exact unless it overflows)."""
    return scale * -(2 ** (bits - 1))


def symmetric_stats(Wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric grid of each group along the last axis (GGUF Q4_0's rule at 4 bits).

    Args:
        Wg: [..., g] float weights, one group per last-axis row.
    Returns:
        scale, minimum: [...] fp16; scale = the value of largest |w| over ``-2**(bits-1)``, minimum
        the implied :func:`symmetric_minimum`; an all-zero group gets scale 0.
    """
    Wg = Wg.float()
    extreme = Wg.gather(-1, Wg.abs().argmax(dim=-1, keepdim=True))[..., 0]
    scale = (extreme / -(2 ** (bits - 1))).to(torch.float16)
    return scale, symmetric_minimum(scale, bits)


def absmax_stats(Wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric grid of each group along the last axis with the largest |w| at code ``2**bits - 1``
    (GGUF Q8_0's rule at 8 bits: ``d = max|w| / 127``, codes -127..127 around the centre).

    Returns:
        scale, minimum: [...] fp16; minimum the implied :func:`symmetric_minimum`.
    """
    scale = (Wg.float().abs().amax(dim=-1) / (2 ** (bits - 1) - 1)).to(torch.float16)
    return scale, symmetric_minimum(scale, bits)


def grid_stats(Wg: torch.Tensor, bits: int, symmetric: bool, absmax: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`symmetric_stats` (or with ``absmax`` :func:`absmax_stats`) or :func:`minmax_stats` of each
    group along the last axis."""
    if symmetric:
        return absmax_stats(Wg, bits) if absmax else symmetric_stats(Wg, bits)
    return minmax_stats(Wg, bits)


def grid_codes(W: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest codes of ``W`` on the grid ``q * scale + minimum`` (scale 0 -> code 0).

    Args:
        W: [..., k] float; scale, minimum: fp16 broadcastable to W (a symmetric scale may be negative).
    Returns:
        [..., k] float codes in [0, 2**bits) (exact integers).
    """
    step = torch.where(scale != 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    return torch.round((W.float() - minimum.float()) / step).clamp_(0, 2**bits - 1)


def group_count(in_features: int, group_size: int) -> int:
    """Groups per row: ``ceil(in / group_size)`` (the last one may be short)."""
    return -(-in_features // group_size)


def pad_groups(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """``W: [out, in]`` -> ``[out, G, group_size]``, the short last group padded with copies of its
    last column (which leaves its min and max unchanged)."""
    pad = group_count(W.shape[1], group_size) * group_size - W.shape[1]
    if pad:
        W = torch.cat([W, W[:, -1:].expand(-1, pad)], dim=1)
    return W.reshape(W.shape[0], -1, group_size)


def group_quantize(W: torch.Tensor, bits: int, group_size: int, symmetric: bool = False, absmax: bool = False):
    """Round-to-nearest over groups of input columns, on min-max (or symmetric) grids.

    Args:
        W: [out, in] float weight.
        bits: 2..8.
        group_size: input columns per group (the last group may be shorter).
        symmetric: :func:`symmetric_stats` grids instead of min-max ones (:func:`absmax_stats` with ``absmax``).
    Returns:
        codes [out, in] uint8 in [0, 2**bits), scale [out, G] fp16, minimum [out, G] fp16.
    """
    out_features, in_features = W.shape
    Wg = pad_groups(W, group_size)
    scale, minimum = grid_stats(Wg, bits, symmetric, absmax)
    codes = grid_codes(Wg, scale[..., None], minimum[..., None], bits)
    return codes.to(torch.uint8).reshape(out_features, -1)[:, :in_features], scale, minimum


@register_format("quant")
@dataclass(frozen=True, eq=False)
class Quant(Format):
    """Group-quantized weight.

    Attributes:
        shape: (out, in).
        bits: bits per code, 2..8.
        group_size: input columns per group (the last group may be shorter).
        codes: [ceil(out * in * bits / 8)] uint8, codes packed row-major (see ``bitpack``).
        scale: [out, ceil(in / group_size)] fp16.
        minimum: [out, ceil(in / group_size)] fp16; None if symmetric.
        symmetric: the minimum is implied, ``-2**(bits-1) * scale``, not stored.
    """

    ARRAYS = ("codes", "scale", "minimum")

    bits: int
    group_size: int
    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor | None
    symmetric: bool = False

    @classmethod
    def array_names(cls, meta: dict) -> tuple[str, ...]:
        return ("codes", "scale") if meta.get("symmetric") is True else cls.ARRAYS

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, bits: int, group_size: int, symmetric: bool = False,
                   absmax: bool = False, where: str = "weight") -> "Quant":
        """Quantize ``W: [out, in]`` round-to-nearest with min-max (or symmetric; ``absmax``: see
        :func:`absmax_stats`) groups."""
        if not MIN_BITS <= bits <= MAX_BITS:
            raise SparsaError(f"{where}: --bits {bits} is outside {MIN_BITS}..{MAX_BITS}")
        if group_size <= 0:
            raise SparsaError(f"{where}: --group-size {group_size} must be positive")
        codes, scale, minimum = group_quantize(W, bits, group_size, symmetric, absmax)
        if not (torch.isfinite(scale).all() and torch.isfinite(minimum).all()):
            raise SparsaError(f"{where}: weights beyond the fp16 range (|w| > 65504) or non-finite; "
                              "cannot store fp16 group statistics")
        return cls(shape=tuple(W.shape), bits=bits, group_size=group_size,
                   codes=pack_bits(codes, bits), scale=scale, minimum=None if symmetric else minimum,
                   symmetric=symmetric)

    @property
    def implied_zero(self) -> int:
        """The code a symmetric grid centres on, ``2**(bits-1)``; 0 when the minimum is stored."""
        return 2 ** (self.bits - 1) if self.symmetric else 0

    def group_minimum(self) -> torch.Tensor:
        """[out, G] fp16: the stored minimum, or the one a symmetric grid implies."""
        return symmetric_minimum(self.scale, self.bits) if self.minimum is None else self.minimum

    def unpacked_codes(self) -> torch.Tensor:
        """Codes as [out, in] uint8."""
        return unpack_bits(self.codes, self.bits, self.numel).view(self.shape)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out_features, in_features = self.shape
        q = pad_groups(self.unpacked_codes(), self.group_size).float()  # [out, G, g]
        W = q * self.scale.float()[..., None] + self.group_minimum().float()[..., None]
        return W.reshape(out_features, -1)[:, :in_features].to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(isinstance(self.bits, int) and MIN_BITS <= self.bits <= MAX_BITS, where,
              f"bits={self.bits!r} outside {MIN_BITS}..{MAX_BITS}")
        check(isinstance(self.group_size, int) and self.group_size > 0, where,
              f"group_size={self.group_size!r} is not a positive integer")
        groups = (self.shape[0], group_count(self.shape[1], self.group_size))
        check_array(self.codes, where, "codes", (torch.uint8,), (packed_nbytes(self.numel, self.bits),))
        check_array(self.scale, where, "scale", (torch.float16,), groups)
        check(isinstance(self.symmetric, bool), where, f"symmetric={self.symmetric!r} is not a boolean")
        check(self.symmetric == (self.minimum is None), where,
              "a symmetric weight stores no minimum" if self.symmetric else "minimum is missing")
        if self.minimum is not None:
            check_array(self.minimum, where, "minimum", (torch.float16,), groups)
        check(bool(torch.isfinite(self.scale).all() and torch.isfinite(self.group_minimum()).all()), where,
              "scale or minimum holds inf/nan" if self.minimum is not None
              else f"scale holds inf/nan or |scale| beyond 65504 / {2 ** (self.bits - 1)} (the implied minimum overflows fp16)")
