"""``NM``: N:M semi-structured sparsity (at most N kept weights in every M consecutive inputs).

Each group of M input columns keeps exactly N slots (zeros fill groups with fewer nonzeros);
a slot stores its value and its position in the group in ``ceil(log2 M)`` bits.
Storage: ``N/M * (value_bits + ceil(log2 M))`` bits/param, e.g. 2:4 fp32 = 17, bf16 = 9.
"""

import math
from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import VALUE_DTYPES, Format, check, check_array
from sparsa.formats.bitpack import pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.registry import register_format


def index_bits(m: int) -> int:
    """Bits that store a position in a group of ``m``."""
    return max(1, math.ceil(math.log2(m)))


def check_nm(n: int, m: int, in_features: int, where: str) -> None:
    """Raise unless 1 <= n <= m, m <= 256 and m divides ``in_features``."""
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m <= 256):
        raise SparsaError(f"{where}: N:M pattern {n}:{m} needs 1 <= N <= M <= 256")
    if in_features % m:
        raise SparsaError(f"{where}: in_features={in_features} is not a multiple of M={m}")


@register_format("nm")
@dataclass(frozen=True, eq=False)
class NM(Format):
    """N:M sparse weight.

    Attributes:
        shape: (out, in).
        n, m: N kept slots per group of M input columns.
        values: [out, in / m * n] fp32|fp16|bf16, slot values row-major.
        index: packed positions: [ceil(out * in / m * n * index_bits(m) / 8)] uint8, slot order.
    """

    ARRAYS = ("values", "index")

    n: int
    m: int
    values: torch.Tensor
    index: torch.Tensor

    @property
    def slots(self) -> int:
        """Number of stored slots (``out * in / m * n``)."""
        return self.shape[0] * self.shape[1] // self.m * self.n

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, n: int, m: int, where: str = "weight") -> "NM":
        """Encode ``W: [out, in]`` that already has at most ``n`` nonzeros per group of ``m``."""
        out_features, in_features = W.shape
        check_nm(n, m, in_features, where)
        groups = W.reshape(out_features, in_features // m, m)  # [out, G, m]
        nonzero = groups != 0
        worst = int(nonzero.sum(-1).max()) if groups.numel() else 0
        if worst > n:
            raise SparsaError(f"{where}: a group of {m} holds {worst} nonzeros, more than N={n}")
        # Slots: nonzero positions first, then the lowest free positions; stored in ascending order.
        key = nonzero.to(torch.int32) * (2 * m) - torch.arange(m, dtype=torch.int32, device=W.device)
        pos = key.topk(n, dim=-1).indices.sort(dim=-1).values  # [out, G, n]
        values = groups.gather(-1, pos).reshape(out_features, -1).clone()
        return cls(shape=tuple(W.shape), n=n, m=m, values=values,
                   index=pack_bits(pos, index_bits(m)))

    def positions(self) -> torch.Tensor:
        """[out, in / m, n] int64 position of each slot inside its group."""
        pos = unpack_bits(self.index, index_bits(self.m), self.slots)
        return pos.long().view(self.shape[0], self.shape[1] // self.m, self.n)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out_features, in_features = self.shape
        pos = self.positions()
        W = self.values.new_zeros(out_features, in_features // self.m, self.m)
        W.scatter_(-1, pos, self.values.view(pos.shape))
        return W.view(self.shape).to(dtype or self.values.dtype)

    def validate(self, where: str) -> None:
        super().validate(where)
        check_nm(self.n, self.m, self.shape[1], where)
        check_array(self.values, where, "values", VALUE_DTYPES, (self.shape[0], self.slots // self.shape[0]))
        check_array(self.index, where, "index", (torch.uint8,),
                    (packed_nbytes(self.slots, index_bits(self.m)),))
        pos = self.positions()
        check(bool((pos < self.m).all()), where, f"index holds a position >= M={self.m}")
        check(bool((pos.diff(dim=-1) > 0).all()), where, "index positions are not strictly increasing in a group")
