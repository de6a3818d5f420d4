"""Stripe selectors compared with AnchorAttention on the same regions and the same gather kernel.

Each selector scores every stripe key of every group ([B, Hq, groups, N] fp32, higher is more
important); :func:`matched_index` keeps the best keys of each group so that all selectors can be
compared at the density AnchorAttention reached. The dense region (initial tokens, the window
before the group and the group's own rows) is shared by all of them, so ``streaming`` (no stripes) is the floor.

* ``anchor``: the identification rule of the config (:data:`sparsa.attention.anchor.SCORES`).
* ``vertical_slash`` (MInference-style): the softmax of the last ``last`` queries gives column
  sums (verticals) and diagonal sums (slashes); a key scores the larger of its column and the
  best slash crossing the group's rows.
* ``flex_blocks`` (FlexPrefill-style query-aware blocks): pooled queries of each tile against
  pooled keys of each block of ``block_m`` keys; the block softmax mass, max over the group's
  tiles, scores every key of the block.
"""

import math

import torch
import torch.nn.functional as F

from sparsa.attention.anchor import tile_means
from sparsa.kernels.reference_attention import kv_heads
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions


def vertical_slash_scores(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float,
                          last: int = 64) -> torch.Tensor:
    """MInference-style estimate from the last ``last`` query rows; see the module docstring."""
    B, Hq, N, _ = q.shape
    last = min(last, N)
    rows = torch.arange(N - last, N, device=q.device)
    logits = q[:, :, -last:].float() @ kv_heads(k, Hq).float().transpose(-1, -2) * scale  # [B,Hq,last,N]
    keys = torch.arange(N, device=q.device)
    logits = logits.masked_fill(keys[None, :] > rows[:, None], -math.inf)
    p = logits.softmax(dim=-1)
    vertical = p.sum(dim=2)  # [B, Hq, N]
    offsets = rows[:, None] - keys[None, :]  # [last, N]: diagonal offset i - j of each entry
    slash = torch.zeros(B, Hq, N, device=q.device).index_add_(
        2, offsets.clamp(min=0).flatten(), (p * (offsets >= 0)).flatten(2))  # [B, Hq, offset]
    G = regions.group
    # best slash crossing rows [r0, r0 + G) at key j: offsets r0 - j .. r0 + G - 1 - j
    window = F.max_pool1d(F.pad(slash.view(B * Hq, 1, N), (0, G - 1)), G, stride=1).view(B, Hq, N)
    groups = regions.n_groups(N)
    r0 = torch.arange(groups, device=q.device)[:, None] * G
    offset = (r0 - keys[None, :]).clamp(0, N - 1)  # [groups, N]
    return torch.maximum(vertical[:, :, None, :], window[:, :, offset])


def flex_block_scores(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float) -> torch.Tensor:
    """FlexPrefill-style pooled block softmax mass; see the module docstring."""
    B, Hq, N, _ = q.shape
    bm = regions.block_m
    q_bar = tile_means(q, bm)  # [B, Hq, T, D]
    k_bar = tile_means(kv_heads(k, Hq), bm)  # [B, Hq, T, D]
    T = q_bar.shape[2]
    logits = q_bar @ k_bar.transpose(-1, -2) * scale  # [B, Hq, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    mass = logits.masked_fill(~causal, -math.inf).softmax(dim=-1)
    groups = regions.n_groups(N)
    mass = F.pad(mass, (0, 0, 0, groups * regions.step - T)).view(B, Hq, groups, regions.step, T).amax(dim=3)
    return mass.repeat_interleave(bm, dim=-1)[..., :N]  # [B, Hq, groups, N]


def matched_index(scores: torch.Tensor, regions: StripeRegions, pairs: int) -> StripeIndex:
    """Keep the best-scoring stripe keys of every group, the same share of each group's candidates,
    with the share chosen (by bisection) so the computed pairs come as close as they can to ``pairs``.

    Args:
        scores: [B, Hq, groups, N] fp32.
        pairs: target stripe (query, key) pairs, e.g. what AnchorAttention computed.
    """
    B, Hq, groups, N = scores.shape
    candidates = regions.stripe_candidates(N, scores.device)  # [groups, N]
    ranked = scores.masked_fill(~candidates, -math.inf).argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(ranked).scatter_(-1, ranked, torch.arange(N, device=scores.device).expand_as(ranked))
    rows = torch.full((groups,), regions.group, device=scores.device)
    rows[-1] = N - (groups - 1) * regions.group
    per_group = candidates.sum(dim=1).float()

    def keep_counts(share: float) -> torch.Tensor:
        return torch.round(per_group * share).long()

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if int((keep_counts(mid) * rows).sum()) * B * Hq < pairs:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda s: abs(int((keep_counts(s) * rows).sum()) * B * Hq - pairs))
    return StripeIndex.from_mask((rank < keep_counts(best)[:, None]) & candidates)
