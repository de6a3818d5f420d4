"""Stripe selectors compared with AnchorAttention on the same regions and the same gather kernel.

Each selector estimates where a head's softmax mass lies and keeps, per head, the fewest units
(key blocks, verticals, slashes), largest estimate first, whose estimated mass reaches a share
``gamma`` of the head's estimate (FlexPrefill, arXiv 2502.20766, Algorithms 2 and 3: 0.9 to 0.95
there). One ``gamma`` for all heads is bisected (:func:`matched_gamma`) so that the stripe pairs
of all heads together, hence the mean density over heads, come as close as they can to what
AnchorAttention computed; heads then differ in density (a head with concentrated mass reaches
``gamma`` with few units).

The dense region (initial tokens, the window before the group and the group's own rows) is
shared by all selectors, so ``streaming`` (no stripes) is the floor. A unit inside the dense
region costs nothing, but its estimated mass counts toward ``gamma``, as FlexPrefill always
computes the first and the diagonal blocks.

* ``flex_blocks`` (FlexPrefill's query-aware pattern): ``A = softmax(q̄ k̄ᵀ * scale)`` of the
  mean query of each ``block_m``-row tile against the mean key of each ``block_m``-key block,
  causal over blocks (every tile's row sums to 1; FlexPrefill's block is 128, here the kernels'
  tile). Per head, the largest entries of the flattened map up to ``gamma`` of its total: over all
  the head's query tiles at once, as FlexPrefill's ``score_cover_idx(attn, gamma * num_blocks)``
  does, not a separate quota per tile. Stripe keys are chosen per group of ``step`` tiles, so a
  group gathers the union of its tiles' kept key blocks within its stripe range: every kept
  (tile, block) pair is computed, plus the other tiles' blocks (none when ``step`` is 1, the default).
* ``vertical_slash`` (MInference's pattern, sized as FlexPrefill sizes it): the softmax of the last
  ``last`` query rows gives each key's column mass (vertical) and each diagonal offset's mass
  (slash); per head, the largest verticals up to ``gamma`` of the vertical mass and the largest
  slashes up to ``gamma`` of the slash mass, so each head gets its own number of each. A group
  gathers its stripe-range keys on a kept vertical or on a kept slash through one of its rows.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sparsa.attention.anchor import tile_means
from sparsa.kernels.reference_attention import kv_heads
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions


@dataclass
class Cover:
    """Per head, the fewest entries, largest first, whose mass reaches a share ``gamma`` of the head's.

    Attributes:
        rank: [..., M] int64, each entry's position in its head's descending order.
        share: [..., M] fp64, the head's cumulative mass share through each sorted position (ends at 1).
    """

    rank: torch.Tensor
    share: torch.Tensor

    @classmethod
    def of(cls, mass: torch.Tensor) -> "Cover":
        """From non-negative ``mass`` [..., M], one head per leading index."""
        values, order = mass.sort(dim=-1, descending=True, stable=True)
        cum = values.double().cumsum(dim=-1)
        positions = torch.arange(order.shape[-1], device=mass.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        return cls(rank, cum / cum[..., -1:].clamp(min=torch.finfo(torch.float64).tiny))

    def keep(self, gamma: float) -> torch.Tensor:
        """[..., M] bool: per head the shortest prefix whose share reaches ``gamma`` (empty at 0)."""
        count = (self.share < gamma).sum(dim=-1, keepdim=True) + (gamma > 0)
        return self.rank < count

    def gammas(self) -> torch.Tensor:
        """[K] fp64 sorted: 0 and every share at which some head's prefix grows (constant in between)."""
        return torch.unique(torch.cat([self.share.flatten(), self.share.new_zeros(1)]))


def matched_gamma(pairs_at: Callable[[float], int], gammas: torch.Tensor, target: int) -> float:
    """The gamma of the sorted candidates ``gammas`` whose pairs come closest to ``target``.

    Args:
        pairs_at: gamma -> stripe pairs kept, nondecreasing in gamma.
        gammas: [K] sorted candidates (e.g. :meth:`Cover.gammas`).
        target: stripe (query, key) pairs to match, over all heads.
    """
    seen: dict[int, int] = {}

    def pairs(i: int) -> int:
        if i not in seen:
            seen[i] = pairs_at(float(gammas[i]))
        return seen[i]

    lo, hi = 0, len(gammas) - 1
    while lo < hi:  # the first candidate reaching target (the last one if none does)
        mid = (lo + hi) // 2
        if pairs(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min((lo, max(lo - 1, 0)), key=lambda i: abs(pairs(i) - target))
    return float(gammas[best])


def mask_pairs(mask: torch.Tensor, regions: StripeRegions) -> int:
    """Stripe (query, key) pairs of a [B, H, groups, N] bool mask: each key times its group's rows."""
    groups, N = mask.shape[2:]
    rows = torch.full((groups,), regions.group, device=mask.device)
    rows[-1] = N - (groups - 1) * regions.group
    return int((mask.sum(dim=-1) * rows).sum())


def flex_block_mass(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float) -> torch.Tensor:
    """FlexPrefill's estimated block attention: [B, Hq, T, T] fp32, row ``t`` (query tile) a
    softmax over key blocks ``b <= t`` of pooled query against pooled key (0 above the diagonal)."""
    bm = regions.block_m
    q_bar = tile_means(q, bm)  # [B, Hq, T, D]
    k_bar = tile_means(kv_heads(k, q.shape[1]), bm)  # [B, Hq, T, D]
    T = q_bar.shape[2]
    logits = q_bar @ k_bar.transpose(-1, -2) * scale  # [B, Hq, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return logits.masked_fill(~causal, -math.inf).softmax(dim=-1)


def flex_stripes(blocks: torch.Tensor, regions: StripeRegions, n: int) -> torch.Tensor:
    """[B, Hq, groups, n] bool stripe keys of the kept (tile, key block) pairs ``blocks``
    [B, Hq, T, T] bool: each group's union over its tiles, within its stripe range."""
    B, Hq, T, _ = blocks.shape
    groups = regions.n_groups(n)
    padded = blocks.new_zeros(B, Hq, groups * regions.step, T)
    padded[:, :, :T] = blocks
    per_group = padded.view(B, Hq, groups, regions.step, T).any(dim=3)  # [B, Hq, groups, T]
    return per_group.repeat_interleave(regions.block_m, dim=-1)[..., :n] & regions.stripe_candidates(n, blocks.device)


def flex_blocks_index(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float,
                      pairs: int) -> StripeIndex:
    """FlexPrefill's query-aware blocks at the gamma whose stripe pairs come closest to ``pairs``.

    Args:
        q: [B, Hq, N, D]; k: [B, Hkv, N, D].
        pairs: target stripe (query, key) pairs over all heads, e.g. what AnchorAttention computed.
    """
    mass = flex_block_mass(q, k, regions, scale)
    cover = Cover.of(mass.flatten(2))  # per head, over all (tile, block) pairs

    def stripes(gamma: float) -> torch.Tensor:
        return flex_stripes(cover.keep(gamma).view_as(mass), regions, q.shape[2])

    gamma = matched_gamma(lambda g: mask_pairs(stripes(g), regions), cover.gammas(), pairs)
    return StripeIndex.from_mask(stripes(gamma))


def vertical_slash_mass(q: torch.Tensor, k: torch.Tensor, scale: float, last: int = 64):
    """Column and diagonal mass of the causal softmax of the last ``last`` query rows.

    Returns:
        vertical [B, Hq, N] fp32 (mass on key ``j``) and slash [B, Hq, N] fp32 (mass on offset
        ``i - j``), each summing to ``last`` per head.
    """
    B, Hq, N, _ = q.shape
    last = min(last, N)
    rows = torch.arange(N - last, N, device=q.device)
    logits = q[:, :, -last:].float() @ kv_heads(k, Hq).float().transpose(-1, -2) * scale  # [B, Hq, last, N]
    keys = torch.arange(N, device=q.device)
    p = logits.masked_fill(keys[None, :] > rows[:, None], -math.inf).softmax(dim=-1)
    offsets = rows[:, None] - keys[None, :]  # [last, N]: diagonal offset i - j of each entry
    slash = torch.zeros(B, Hq, N, device=q.device).index_add_(
        2, offsets.clamp(min=0).flatten(), (p * (offsets >= 0)).flatten(2))
    return p.sum(dim=2), slash


def vertical_slash_stripes(vertical: torch.Tensor, slash: torch.Tensor, regions: StripeRegions) -> torch.Tensor:
    """[B, Hq, groups, N] bool stripe keys: in each group's stripe range, the keys of kept
    verticals ``vertical`` [B, Hq, N] bool and the keys ``j`` that a kept slash ``slash``
    [B, Hq, N] bool (by offset) reaches from one of the group's rows ``i`` (offset ``i - j``)."""
    B, Hq, N = vertical.shape
    groups, device = regions.n_groups(N), vertical.device
    r0 = torch.arange(groups, device=device)[:, None] * regions.group  # [groups, 1] first row
    r1 = (r0 + regions.group).clamp(max=N)  # one past the last row
    j = torch.arange(N, device=device)[None, :]
    cum = torch.nn.functional.pad(slash.long().cumsum(dim=-1), (1, 0))  # [B, Hq, N + 1] kept offsets below
    lo, hi = (r0 - j).clamp(0, N).flatten(), (r1 - j).clamp(0, N).flatten()  # offsets r0 - j .. r1 - 1 - j
    crossing = (cum[..., hi] - cum[..., lo] > 0).view(B, Hq, groups, N)
    return (vertical[:, :, None] | crossing) & regions.stripe_candidates(N, device)


def vertical_slash_index(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float, pairs: int,
                         last: int = 64) -> StripeIndex:
    """Vertical-slash with per-head counts at the gamma whose stripe pairs come closest to ``pairs``.

    Args:
        q: [B, Hq, N, D]; k: [B, Hkv, N, D].
        pairs: target stripe (query, key) pairs over all heads.
        last: query rows of the estimate (MInference: 64).
    """
    vertical, slash = vertical_slash_mass(q, k, scale, last)
    covers = Cover.of(vertical), Cover.of(slash)

    def stripes(gamma: float) -> torch.Tensor:
        return vertical_slash_stripes(covers[0].keep(gamma), covers[1].keep(gamma), regions)

    gammas = torch.unique(torch.cat([c.gammas() for c in covers]))
    gamma = matched_gamma(lambda g: mask_pairs(stripes(g), regions), gammas, pairs)
    return StripeIndex.from_mask(stripes(gamma))
