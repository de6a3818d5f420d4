"""The best recall any mask can reach with a given number of (query, key) pairs in each head.

Recall is the mean over query rows of the dense softmax mass a mask keeps in the row, and every
row's probabilities sum to 1, so a head's recall is its kept mass divided by its rows. With a
budget of ``c`` pairs the best mask of a head therefore keeps the head's ``c`` largest causal
probabilities, taken over all its rows at once (not a fixed share of every row).

:class:`TopMass` sums them exactly (to float rounding) without holding a head's ``N(N+1)/2``
probabilities (134 MB fp32 per head at N = 8192), from two passes over the same row groups:

1. :meth:`TopMass.add_coarse`: per head, a histogram over the top 16 bits of each probability's
   fp32 bit pattern (sign 0, 8 exponent bits, 7 mantissa bits; for non-negative floats the bit
   pattern orders like the value), a count and an fp64 mass per bin;
2. :meth:`TopMass.plan` finds, per budget and head, the bin that holds the head's ``c``-th
   largest value; :meth:`TopMass.add_fine` then histograms the low 16 bits of the values in those
   bins only, which pins every such value exactly (16 + 16 bits are the whole fp32), so the
   boundary bin adds precisely its largest ``c - (count above it)`` values.

The second pass must see bit-identical probabilities (the same ops on the same device).
"""

import torch

HI_BINS = 1 << 15  # top 16 bits of a non-negative fp32: exponent and 7 mantissa bits
LO_BINS = 1 << 16  # the other 16 mantissa bits


def _bits(p: torch.Tensor) -> torch.Tensor:
    """fp32 bit patterns of ``p`` as int64 (same shape)."""
    return p.float().contiguous().view(torch.int32).long()


class TopMass:
    """Per head, the exact sum of the ``c`` largest probabilities, streamed over row groups.

    Feed every group's probabilities ``p`` [heads, rows, keys] fp32 (0 outside the causal area:
    a 0 never outranks a causal probability, so the top-``c`` sum is unchanged for any ``c`` up
    to the head's causal pairs) to :meth:`add_coarse`, call :meth:`plan` with the budgets, feed
    the same groups again to :meth:`add_fine`, then read :meth:`masses`.

    Args:
        heads: number of heads (batch x query heads, flattened).
    """

    def __init__(self, heads: int, device=None):
        self.heads = heads
        self.count = torch.zeros(heads, HI_BINS, dtype=torch.int64, device=device)
        self.mass = torch.zeros(heads, HI_BINS, dtype=torch.float64, device=device)
        self._offset = torch.arange(heads, device=device)[:, None, None]  # [heads, 1, 1]

    def add_coarse(self, p: torch.Tensor) -> None:
        """Pass 1: count and mass per (head, top-16-bit bin) of ``p`` [heads, rows, keys]."""
        bins = (self._offset * HI_BINS + (_bits(p) >> 16)).flatten()
        size = self.heads * HI_BINS
        self.count += torch.bincount(bins, minlength=size).view(self.heads, HI_BINS)
        self.mass += torch.bincount(bins, weights=p.flatten().double(), minlength=size).view(self.heads, HI_BINS)

    def plan(self, budgets: torch.Tensor) -> None:
        """Locate, for each budget, the boundary bin of every head; resets the fine histogram.

        Args:
            budgets: [S, heads] int64, pairs kept per head for each of S selections (at most the
                head's causal pairs).
        """
        count, mass = self.count.flip(-1), self.mass.flip(-1)  # [heads, bins], largest values first
        cum_count, cum_mass = count.cumsum(-1), mass.cumsum(-1)
        c = budgets.to(self.count.device).T.contiguous()  # [heads, S]
        pos = torch.searchsorted(cum_count, c).clamp(max=HI_BINS - 1)  # first bin where the count reaches c
        self.need = c - (cum_count.gather(-1, pos) - count.gather(-1, pos))  # values taken from that bin
        self.above = cum_mass.gather(-1, pos) - mass.gather(-1, pos)  # [heads, S] fp64 mass of the bins above
        self.bin = HI_BINS - 1 - pos  # [heads, S] top-16-bit pattern of the boundary bin
        keys, self.slot = torch.unique(self._offset[:, :, 0] * HI_BINS + self.bin, return_inverse=True)
        self.lookup = torch.full((self.heads * HI_BINS,), -1, dtype=torch.int64, device=c.device)
        self.lookup[keys] = torch.arange(keys.numel(), device=c.device)
        self.fine = torch.zeros(keys.numel() * LO_BINS, dtype=torch.int64, device=c.device)

    def add_fine(self, p: torch.Tensor) -> None:
        """Pass 2: count every exact value of ``p`` [heads, rows, keys] that falls in a boundary bin."""
        bits = _bits(p)
        slot = self.lookup[self._offset * HI_BINS + (bits >> 16)]
        hit = slot >= 0
        self.fine += torch.bincount(slot[hit] * LO_BINS + (bits[hit] & (LO_BINS - 1)), minlength=self.fine.numel())

    def masses(self) -> torch.Tensor:
        """[S, heads] fp64: each head's sum of its ``budgets[s, h]`` largest probabilities."""
        lo = torch.arange(LO_BINS - 1, -1, -1, device=self.fine.device)  # largest low bits first
        counts = self.fine.view(-1, LO_BINS)[:, lo][self.slot]  # [heads, S, LO_BINS]
        values = ((self.bin[..., None] << 16) | lo).to(torch.int32).view(torch.float32).double()
        before = counts.cumsum(-1) - counts  # values of the bin taken before each entry
        take = torch.minimum((self.need[..., None] - before).clamp(min=0), counts)
        kept = torch.where(take > 0, take * values, 0.0)  # 0, not 0 * nan, where a bin's patterns are not numbers
        return (self.above + kept.sum(-1)).T
