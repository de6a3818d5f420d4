"""Where stripe-sparse attention attends densely and where it gathers stripes: one definition for
the reference, the Triton kernels, the selectors and the metrics.

Query rows are cut into tiles of ``block_m`` rows and the tiles into groups of ``step`` tiles
(``G = block_m * step`` rows). For query row ``i`` of group ``g = i // G``, with the group's
local start ``L_g = max(g*G - window, 0)``:

    dense keys    j <= i  and  (j < init  or  j >= L_g)     # initial tokens + the recent keys
    stripe keys   init <= j < L_g, chosen per (batch, head, group) by a selector

so every row sees at least the ``window`` keys before its group and its group's own rows.

The two key sets never overlap and together with the causal limit they cover ``[0, i]``, so no
key is counted twice and no key range is skipped (the released AnchorAttention code does both).
A :class:`StripeIndex` holds the chosen stripe keys as an exact-size CSR.
"""

from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError


@dataclass(frozen=True)
class StripeRegions:
    """Tile and group geometry.

    Args:
        block_m: query rows per tile (pooling unit of the selectors, kernel row tile).
        step: tiles per group; a group's rows share one set of stripe keys.
        init: leading key positions every row attends densely (attention sinks).
        window: keys before the group's first row every row of the group attends densely.
    """

    block_m: int = 64
    step: int = 2
    init: int = 64
    window: int = 0

    def __post_init__(self):
        for name in ("block_m", "step"):
            if getattr(self, name) < 1:
                raise SparsaError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("init", "window"):
            if getattr(self, name) < 0:
                raise SparsaError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def group(self) -> int:
        """Query rows per group, ``G``."""
        return self.block_m * self.step

    def n_groups(self, n: int) -> int:
        return -(-n // self.group)

    def n_tiles(self, n: int) -> int:
        return -(-n // self.block_m)

    def local_start(self, g):
        """``L_g = max(g*G - window, 0)``: the first key of group ``g``'s local region (int or tensor)."""
        start = g * self.group - self.window
        return max(start, 0) if isinstance(start, int) else start.clamp(min=0)

    def dense_mask(self, n: int, device=None) -> torch.Tensor:
        """[n, n] bool: ``dense[i, j]`` for the causal dense region (init + the row's own group)."""
        i = torch.arange(n, device=device)[:, None]
        j = torch.arange(n, device=device)[None, :]
        return (j <= i) & ((j < self.init) | (j >= self.local_start(i // self.group)))

    def dense_pairs(self, n: int) -> int:
        """(query, key) pairs in the dense region of ``n`` rows, without building the mask."""
        i = torch.arange(n, dtype=torch.int64)
        start = self.local_start(i // self.group)
        init = torch.clamp(i + 1, max=self.init)
        local = i + 1 - start
        overlap = torch.clamp(init - start, min=0)
        return int((init + local - overlap).sum())

    def stripe_pairs(self, index: "StripeIndex", n: int) -> int:
        """(query, key) pairs the stripes of ``index`` add: each kept key times its group's rows."""
        rows = torch.full((index.groups,), self.group, dtype=torch.int64)
        rows[-1] = n - (index.groups - 1) * self.group
        return int((index.counts().cpu() * rows).sum())

    def stripe_candidates(self, n: int, device=None) -> torch.Tensor:
        """[n_groups, n] bool: the keys each group may gather, ``[init, L_g)``."""
        g = torch.arange(self.n_groups(n), device=device)[:, None]
        j = torch.arange(n, device=device)[None, :]
        return (j >= self.init) & (j < self.local_start(g))


@dataclass
class StripeIndex:
    """Chosen stripe keys as an exact-size CSR with one row per (batch, head, group).

    Attributes:
        indptr: [batch * heads * groups + 1] int64; row ``r = (b * heads + h) * groups + g``.
        indices: [nnz] int32 key positions, strictly increasing within each row.
        batch, heads, groups: the row grid.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    batch: int
    heads: int
    groups: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "StripeIndex":
        """From a [B, H, groups, N] bool mask of chosen keys (``torch.nonzero`` order)."""
        B, H, n_groups, _ = mask.shape
        counts = mask.reshape(B * H * n_groups, -1).sum(dim=1)
        indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=mask.device)
        indptr[1:] = counts.cumsum(0)
        indices = mask.reshape(B * H * n_groups, -1).nonzero()[:, 1].to(torch.int32)
        return cls(indptr, indices, B, H, n_groups)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def counts(self) -> torch.Tensor:
        """[B, H, groups] int64 keys per row."""
        return (self.indptr[1:] - self.indptr[:-1]).view(self.batch, self.heads, self.groups)

    def to_mask(self, n: int) -> torch.Tensor:
        """[B, H, groups, n] bool."""
        rows = torch.repeat_interleave(torch.arange(self.indptr.numel() - 1, device=self.indptr.device),
                                       self.indptr[1:] - self.indptr[:-1])
        mask = torch.zeros(self.indptr.numel() - 1, n, dtype=torch.bool, device=self.indptr.device)
        mask[rows, self.indices.long()] = True
        return mask.view(self.batch, self.heads, self.groups, n)

    def check(self, regions: StripeRegions, n: int) -> None:
        """Raise unless every row is strictly increasing and inside its group's stripe range."""
        if self.indptr.numel() != self.batch * self.heads * self.groups + 1 or int(self.indptr[-1]) != self.nnz:
            raise SparsaError(f"stripe index: indptr holds {self.indptr.numel()} entries ending at "
                              f"{int(self.indptr[-1])}, expected {self.batch * self.heads * self.groups + 1} "
                              f"ending at nnz={self.nnz}")
        if self.groups != regions.n_groups(n):
            raise SparsaError(f"stripe index: {self.groups} groups, {n} tokens need {regions.n_groups(n)}")
        rows = torch.repeat_interleave(torch.arange(self.indptr.numel() - 1, device=self.indptr.device),
                                       self.indptr[1:] - self.indptr[:-1])
        g = rows % self.groups
        keys = self.indices.long()
        if bool(((keys < regions.init) | (keys >= regions.local_start(g))).any()):
            raise SparsaError("stripe index: a key lies outside its group's stripe range [init, L_g)")
        same_row = rows[1:] == rows[:-1]
        if bool((same_row & (keys[1:] <= keys[:-1])).any()):
            raise SparsaError("stripe index: keys within a row are not strictly increasing")
