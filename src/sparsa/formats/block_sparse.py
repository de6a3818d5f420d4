"""``BlockSparse``: block compressed sparse rows (BSR) with any block shape ``R x C``.

``W: [out, in]`` is tiled into ``R x C`` blocks; only blocks holding a nonzero are stored,
row of blocks by row of blocks, with CSR indices over the block grid.
Storage: ``(1 - s) * value_bits`` bits/param plus one column index per block and one row
pointer per block row.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import VALUE_DTYPES, Format, check, check_array
from sparsa.formats.registry import register_format


def check_block(shape: tuple[int, int], block: tuple[int, int], where: str) -> None:
    """Raise unless the block has positive sides that tile ``shape`` exactly."""
    r, c = block
    if not (isinstance(r, int) and isinstance(c, int) and r > 0 and c > 0):
        raise SparsaError(f"{where}: block {block!r} needs two positive integers")
    if shape[0] % r or shape[1] % c:
        raise SparsaError(f"{where}: weight {shape[0]}x{shape[1]} is not tiled by {r}x{c} blocks")


def column_dtype(block_cols: int) -> torch.dtype:
    """Narrowest signed integer type that indexes ``block_cols`` block columns."""
    return torch.int16 if block_cols <= 2**15 else torch.int32


@register_format("block")
@dataclass(frozen=True, eq=False)
class BlockSparse(Format):
    """Block-sparse weight (BSR).

    Attributes:
        shape: (out, in).
        block: (R, C) block shape, e.g. (1, 16), (16, 1), (4, 1), (32, 32).
        crow: [out / R + 1] int32, block-row pointers into ``col`` / ``values``.
        col: [nnzb] int16 (int32 past 32768 block columns), block column, ascending per row.
        values: [nnzb, R, C] fp32|fp16|bf16.
    """

    ARRAYS = ("crow", "col", "values")
    VALUE_DTYPES: ClassVar[tuple[torch.dtype, ...]] = VALUE_DTYPES

    block: tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        """(block rows, block columns)."""
        return self.shape[0] // self.block[0], self.shape[1] // self.block[1]

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, block: tuple[int, int], where: str = "weight") -> "BlockSparse":
        """Encode the blocks of ``W: [out, in]`` that hold a nonzero."""
        check_block(tuple(W.shape), block, where)
        (r, c), (R, C) = block, (W.shape[0] // block[0], W.shape[1] // block[1])
        tiles = W.reshape(R, r, C, c).transpose(1, 2)  # [R, C, r, c]
        keep = tiles.ne(0).flatten(2).any(-1)  # [R, C]
        crow = torch.cat([keep.new_zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)]).to(torch.int32)
        col = keep.nonzero()[:, 1].to(column_dtype(C))
        return cls(shape=tuple(W.shape), block=tuple(block), crow=crow, col=col,
                   values=tiles[keep].contiguous())

    def block_rows(self) -> torch.Tensor:
        """[nnzb] int64 block-row index of each stored block."""
        return torch.repeat_interleave(torch.arange(self.grid[0], device=self.crow.device),
                                       self.crow.diff().long())

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        (r, c), (R, C) = self.block, self.grid
        tiles = self.values.new_zeros(R, C, r, c)
        tiles[self.block_rows(), self.col.long()] = self.values
        return tiles.transpose(1, 2).reshape(self.shape).to(dtype or self.values.dtype)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(isinstance(self.block, tuple) and len(self.block) == 2, where, f"block {self.block!r} is not RxC")
        check_block(self.shape, self.block, where)
        (R, C), nnzb = self.grid, self.col.numel()
        check_array(self.crow, where, "crow", (torch.int32,), (R + 1,))
        check_array(self.col, where, "col", (torch.int16, torch.int32), (nnzb,))
        check_array(self.values, where, "values", self.VALUE_DTYPES, (nnzb, *self.block))
        steps = self.crow.diff()
        check(int(self.crow[0]) == 0 and int(self.crow[-1]) == nnzb and bool((steps >= 0).all()), where,
              f"crow must rise from 0 to nnzb={nnzb}")
        col = self.col.long()
        check(bool(((col >= 0) & (col < C)).all()), where, f"col holds a block column outside [0, {C})")
        rows = self.block_rows()
        same_row = rows[1:] == rows[:-1]
        check(bool((col.diff()[same_row] > 0).all()), where, "col is not strictly increasing within a block row")
