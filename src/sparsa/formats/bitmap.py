"""``Bitmap``: unstructured sparsity as a 1-bit-per-weight presence mask plus the kept values.

Storage: ``1 + (1 - s) * value_bits`` bits/param at sparsity ``s``.
"""

from dataclasses import dataclass

import torch

from sparsa.formats.base import VALUE_DTYPES, Format, check, check_array
from sparsa.formats.bitpack import pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.registry import register_format


@register_format("bitmap")
@dataclass(frozen=True, eq=False)
class Bitmap(Format):
    """Unstructured sparse weight.

    Attributes:
        shape: (out, in).
        mask: [ceil(out * in / 8)] uint8, 1 bit per weight row-major, set where kept.
        values: [nnz] fp32|fp16|bf16, kept weights in row-major order.
    """

    ARRAYS = ("mask", "values")

    mask: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Bitmap":
        """Encode the nonzeros of ``W: [out, in]`` (pruning happens before, elsewhere)."""
        keep = W.reshape(-1) != 0
        return cls(shape=tuple(W.shape), mask=pack_bits(keep, 1), values=W.reshape(-1)[keep].clone())

    def kept(self) -> torch.Tensor:
        """[out * in] bool presence mask."""
        return unpack_bits(self.mask, 1, self.numel).bool()

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        W = self.values.new_zeros(self.numel)
        W[self.kept()] = self.values
        return W.view(self.shape).to(dtype or self.values.dtype)

    def validate(self, where: str) -> None:
        super().validate(where)
        check_array(self.mask, where, "mask", (torch.uint8,), (packed_nbytes(self.numel, 1),))
        check(isinstance(self.values, torch.Tensor) and self.values.dim() == 1 and self.values.dtype in VALUE_DTYPES,
              where,
              f"values must be 1-D float, got {list(self.values.shape)} {self.values.dtype}")
        nnz = int(self.kept().sum())
        check(nnz == self.values.numel(), where, f"mask marks {nnz} weights but values holds {self.values.numel()}")
