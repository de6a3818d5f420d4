"""``SparseQuant``: a weight both unstructured-sparse and group-quantized (SparseGPT's joint
"50% + 4-bit", Frantar & Alistarh, arXiv 2301.00774, §4).

``W: [out, in]`` is stored as a 1-bit presence mask (as in ``Bitmap``) plus, for the kept
weights only, ``bits``-bit codes on per-group fp16 min-max grids (as in ``Quant``): each row is
cut into groups of ``group_size`` consecutive input columns, the last group shorter when
``group_size`` does not divide ``in``; group ``(r, j)`` stores ``scale[r, j]`` and
``minimum[r, j]``, fitted over the group's kept weights only.

Decode, in fp32 (``j = c // group_size``)::

    W[r, c] = codes[k] * scale[r, j] + minimum[r, j]   if (r, c) is the k-th kept weight (row-major)
    W[r, c] = 0                                        otherwise

Storage: ``1 + (1 - s) * bits + 32 / group_size`` bits/param at sparsity ``s`` (mask, codes,
fp16 scale and minimum), each array rounded up to whole bytes; e.g. 50% + 4-bit with
``group_size`` 128 costs 3.25 bits/param.
"""

from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import Format, check, check_array
from sparsa.formats.bitpack import pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.quant import MAX_BITS, MIN_BITS, grid_codes, group_count, minmax_stats, pad_groups
from sparsa.formats.registry import register_format


def masked_group_range(W: torch.Tensor, kept: torch.Tensor, group_size: int) -> torch.Tensor:
    """Min and max of the kept weights of each group; 0 for a group that keeps none.

    Args:
        W: [out, in] float weight; kept: [out, in] bool.
    Returns:
        [out, G, 2] fp32, (min, max) per group (NaN or inf when a kept weight is).
    """
    inf = torch.tensor(float("inf"), device=W.device)
    lo = pad_groups(torch.where(kept, W.float(), inf), group_size).amin(dim=-1)  # [out, G]
    hi = pad_groups(torch.where(kept, W.float(), -inf), group_size).amax(dim=-1)  # [out, G]
    has_kept = pad_groups(kept, group_size).any(dim=-1)  # [out, G]
    return torch.stack([lo, hi], dim=-1).where(has_kept[..., None], torch.zeros((), device=W.device))


@register_format("sparse_quant")
@dataclass(frozen=True, eq=False)
class SparseQuant(Format):
    """Sparse, group-quantized weight (see the module docstring for the decode).

    Attributes:
        shape: (out, in).
        bits: bits per code, 2..8.
        group_size: input columns per group (the last group may be shorter).
        mask: [ceil(out * in / 8)] uint8, 1 bit per weight row-major, set where kept.
        codes: [ceil(nnz * bits / 8)] uint8, codes of the nnz kept weights packed in row-major order.
        scale: [out, ceil(in / group_size)] fp16.
        minimum: [out, ceil(in / group_size)] fp16.
    """

    ARRAYS = ("mask", "codes", "scale", "minimum")

    bits: int
    group_size: int
    mask: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor

    @classmethod
    def from_codes(cls, *, kept: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                   bits: int, group_size: int, where: str = "weight") -> "SparseQuant":
        """Pack a presence mask and codes into the stored layout.

        Args:
            kept: [out, in] bool, True where the weight is kept.
            codes: [out, in] integer, in [0, 2**bits) at kept positions (other values are ignored).
            scale, minimum: [out, ceil(in / group_size)] fp16 grid of each group.
            bits: 2..8; group_size: input columns per group.
            where: names the tensor in errors.
        """
        check(isinstance(kept, torch.Tensor) and kept.dim() == 2 and kept.dtype == torch.bool, where,
              f"kept must be an [out, in] bool tensor, got {list(getattr(kept, 'shape', []))} "
              f"{getattr(kept, 'dtype', type(kept).__name__)}")
        check(isinstance(codes, torch.Tensor) and codes.shape == kept.shape, where,
              f"codes must have shape {list(kept.shape)} like kept, got {list(getattr(codes, 'shape', []))}")
        check(not codes.is_floating_point() and not codes.is_complex() and codes.dtype != torch.bool, where,
              f"codes must be integer, got {codes.dtype}")
        check(isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS, where,
              f"bits={bits!r} outside {MIN_BITS}..{MAX_BITS}")
        kept_codes = codes[kept]  # [nnz], row-major
        if kept_codes.numel():
            lo, hi = int(kept_codes.min()), int(kept_codes.max())
            check(lo >= 0 and hi < 2**bits, where,
                  f"codes at kept positions must lie in [0, {2**bits}) for bits={bits}, got [{lo}, {hi}]")
        fmt = cls(shape=tuple(kept.shape), bits=bits, group_size=group_size, mask=pack_bits(kept, 1),
                  codes=pack_bits(kept_codes, bits), scale=scale, minimum=minimum)
        fmt.validate(where)
        return fmt

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, bits: int, group_size: int, where: str = "weight") -> "SparseQuant":
        """Quantize the nonzeros of ``W: [out, in]`` round-to-nearest on min-max grids of the kept weights.

        Zeros are the pruned weights (pruning happens before, elsewhere); a group with no kept
        weight stores scale 0 and minimum 0. Any float dtype works; values go through fp32.
        """
        check(isinstance(W, torch.Tensor) and W.dim() == 2 and W.is_floating_point(), where,
              f"W must be an [out, in] float tensor, got {list(getattr(W, 'shape', []))} "
              f"{getattr(W, 'dtype', type(W).__name__)}")
        if not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
            raise SparsaError(f"{where}: --bits {bits} is outside {MIN_BITS}..{MAX_BITS}")
        if not (isinstance(group_size, int) and group_size > 0):
            raise SparsaError(f"{where}: --group-size {group_size} must be positive")
        kept = W != 0  # [out, in]
        # Quant's grid convention, applied to each group's (min, max) pair of kept weights
        scale, minimum = minmax_stats(masked_group_range(W, kept, group_size), bits)  # [out, G] each
        if not (torch.isfinite(scale).all() and torch.isfinite(minimum).all()):
            raise SparsaError(f"{where}: kept weights beyond the fp16 range (|w| > 65504) or non-finite give "
                              "non-finite fp16 group statistics; clip or rescale the weight")
        col_group = torch.arange(W.shape[1], device=W.device) // group_size  # [in]
        codes = grid_codes(W, scale[:, col_group], minimum[:, col_group], bits)  # [out, in]
        return cls.from_codes(kept=kept, codes=codes.to(torch.uint8), scale=scale, minimum=minimum,
                              bits=bits, group_size=group_size, where=where)

    # -- accessors (kernels read these) ------------------------------------------------
    def kept(self) -> torch.Tensor:
        """[out * in] bool presence mask, row-major."""
        return unpack_bits(self.mask, 1, self.numel).bool()

    @property
    def nnz(self) -> int:
        """Kept weights (the mask's popcount)."""
        return int(self.kept().sum())

    def unpacked_codes(self) -> torch.Tensor:
        """[nnz] uint8 codes of the kept weights, row-major order."""
        return unpack_bits(self.codes, self.bits, self.nnz)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        rows, cols = self.kept().view(self.shape).nonzero(as_tuple=True)  # [nnz] each, row-major
        groups = cols // self.group_size
        scale, minimum = self.scale[rows, groups].float(), self.minimum[rows, groups].float()  # [nnz] each
        values = self.unpacked_codes().float() * scale + minimum
        W = torch.zeros(self.shape, dtype=torch.float32, device=self.mask.device)
        W[rows, cols] = values
        return W.to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(isinstance(self.bits, int) and MIN_BITS <= self.bits <= MAX_BITS, where,
              f"bits={self.bits!r} outside {MIN_BITS}..{MAX_BITS}")
        check(isinstance(self.group_size, int) and self.group_size > 0, where,
              f"group_size={self.group_size!r} is not a positive integer")
        groups = (self.shape[0], group_count(self.shape[1], self.group_size))
        check_array(self.mask, where, "mask", (torch.uint8,), (packed_nbytes(self.numel, 1),))
        check_array(self.scale, where, "scale", (torch.float16,), groups)
        check_array(self.minimum, where, "minimum", (torch.float16,), groups)
        check(bool(torch.isfinite(self.scale).all() and torch.isfinite(self.minimum).all()), where,
              "scale or minimum holds inf/nan")
        check(isinstance(self.codes, torch.Tensor), where, "codes is not a tensor")
        check(self.codes.dtype == torch.uint8, where,
              f"codes has dtype {self.codes.dtype}, expected one of [torch.uint8]")
        nnz = self.nnz
        expected = packed_nbytes(nnz, self.bits)
        check(tuple(self.codes.shape) == (expected,), where,
              f"codes has shape {list(self.codes.shape)}, expected [{expected}]: the mask keeps {nnz} weights "
              f"at {self.bits} bits each")
