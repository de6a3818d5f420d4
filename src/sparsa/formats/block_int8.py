"""``BlockSparseInt8``: block-sparse int8 codes with one fp32 scale per output row.

The int8 sibling of ``BlockSparse`` (same BSR indices over ``R x C`` blocks) for the VNNI
kernels: ``W[r, k] = scale[r] * values[...]``, codes symmetric in [-127, 127] with
``scale[r] = max_k |W[r, k]| / 127`` (0 for an all-zero row). Storage: 8 bits per kept weight,
the block indices, and 32 bits per output row.
"""

from dataclasses import dataclass

import torch

from sparsa.formats.base import check, check_array
from sparsa.formats.block_sparse import BlockSparse, check_block
from sparsa.formats.registry import register_format


def int8_row_codes(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (codes [out, in] int8 in [-127, 127], scale [out] fp32 >= 0)."""
    W = W.float()
    scale = W.abs().amax(dim=1) / 127
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(W / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scale


@register_format("block_int8")
@dataclass(frozen=True, eq=False)
class BlockSparseInt8(BlockSparse):
    """Block-sparse int8 weight (BSR) with per-output-row scales.

    Attributes:
        shape, block, crow, col: as in ``BlockSparse``.
        values: [nnzb, R, C] int8 codes.
        scale: [out] fp32, the step of row ``r``.
    """

    ARRAYS = ("crow", "col", "values", "scale")
    VALUE_DTYPES = (torch.int8,)

    scale: torch.Tensor

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, block: tuple[int, int], where: str = "weight") -> "BlockSparseInt8":
        """Quantize ``W: [out, in]`` per row, keep the blocks whose codes hold a nonzero."""
        check_block(tuple(W.shape), block, where)
        codes, scale = int8_row_codes(W)
        bsr = BlockSparse.from_dense(codes, block=block, where=where)
        return cls(shape=bsr.shape, block=bsr.block, crow=bsr.crow, col=bsr.col, values=bsr.values, scale=scale)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        codes = BlockSparse.to_dense(self, torch.float32)
        return (codes * self.scale[:, None]).to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check_array(self.scale, where, "scale", (torch.float32,), (self.shape[0],))
        check(bool((torch.isfinite(self.scale) & (self.scale >= 0)).all()), where, "scale holds inf/nan or a negative step")
        check(self.values.numel() == 0 or int(self.values.min()) >= -127, where, "values hold -128 (codes are in [-127, 127])")
