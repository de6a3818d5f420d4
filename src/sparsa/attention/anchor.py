"""AnchorAttention (arXiv 2505.23520): stripe-sparse causal attention for long-context prefill.

1. **Anchor**: each query row's largest score over its dense region (initial tokens + its own
   group), a cheap near-maximum of the full row.
2. **Identification**: per group, the mean-pooled query of each tile scores every stripe key;
   key ``j`` is kept when, for some tile ``t`` of the group,
   ``q̄_t · k_j * scale - ā_t >= -theta`` (``ā_t``: the tile's mean anchor, natural-log units).
3. **Compute**: softmax over the dense region plus the kept stripe keys.

:func:`anchor_attention` runs the Triton kernels on CUDA and the pure-PyTorch reference
elsewhere; both follow :class:`~sparsa.kernels.stripe_regions.StripeRegions`.
"""

import math
from dataclasses import dataclass

import torch

from sparsa.attention.config import AnchorConfig
from sparsa.kernels.reference_attention import anchors_reference, check_qkv, kv_heads, stripe_attention_reference
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions


@dataclass
class AnchorResult:
    """``o`` [B, Hq, N, D] (dtype of q), ``lse`` [B, Hq, N] fp32, ``index`` the kept stripe keys,
    ``anchors`` [B, Hq, N] fp32."""

    o: torch.Tensor
    lse: torch.Tensor
    index: StripeIndex
    anchors: torch.Tensor


def tile_means(x: torch.Tensor, block_m: int) -> torch.Tensor:
    """Mean over each tile of ``block_m`` rows along dim 2 (the last tile over its valid rows only).

    Args:
        x: [B, H, N] or [B, H, N, D].
    Returns:
        [B, H, tiles] or [B, H, tiles, D], fp32.
    """
    n = x.shape[2]
    tiles = -(-n // block_m)
    pad = tiles * block_m - n
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
    sums = padded.reshape(*x.shape[:2], tiles, block_m, *x.shape[3:]).sum(dim=3)
    rows = torch.full((tiles,), float(block_m), device=x.device)
    rows[-1] = block_m - pad
    return sums / (rows[:, None] if x.dim() == 4 else rows)


def pooled_scores(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, regions: StripeRegions,
                  scale: float) -> torch.Tensor:
    """``max_t (q̄_t · k_j * scale - ā_t)`` over each group's tiles, for every key.

    Returns:
        [B, Hq, groups, N] fp32 (natural-log units; compare with ``-theta``).
    """
    B, Hq, N, _ = q.shape
    q_bar = tile_means(q, regions.block_m)  # [B, Hq, T, D]
    a_bar = tile_means(anchors, regions.block_m)  # [B, Hq, T]
    s = q_bar @ kv_heads(k, Hq).float().transpose(-1, -2) * scale - a_bar[..., None]  # [B, Hq, T, N]
    groups = regions.n_groups(N)
    s = torch.nn.functional.pad(s, (0, 0, 0, groups * regions.step - s.shape[2]), value=-math.inf)
    return s.view(B, Hq, groups, regions.step, N).amax(dim=3)


def identify_reference(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, regions: StripeRegions,
                       theta: float, scale: float) -> StripeIndex:
    """Kept stripe keys: pooled score within ``theta`` of the pooled anchor, inside the stripe range."""
    scores = pooled_scores(q, k, anchors, regions, scale)
    keep = (scores >= -theta) & regions.stripe_candidates(q.shape[2], q.device)
    return StripeIndex.from_mask(keep)


def anchor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: AnchorConfig = AnchorConfig(),
                     *, scale: float | None = None) -> AnchorResult:
    """Causal AnchorAttention of one prefill.

    Args:
        q: [B, Hq, N, D]; k, v: [B, Hkv, N, D] with ``Hq % Hkv == 0`` (GQA without repeating K/V).
        config: threshold, geometry and backend.
        scale: score scale (default ``1/sqrt(D)``).
    """
    _, _, _, _, D = check_qkv(q, k, v)
    scale = 1 / math.sqrt(D) if scale is None else scale
    regions = config.regions
    if config.backend == "triton" or (config.backend == "auto" and q.is_cuda):
        from sparsa.kernels.triton.anchor import anchor_attention_triton

        return AnchorResult(*anchor_attention_triton(q, k, v, regions, config.theta, scale))
    anchors = anchors_reference(q, k, regions, scale)
    index = identify_reference(q, k, anchors, regions, config.theta, scale)
    o, lse = stripe_attention_reference(q, k, v, regions, index, scale)
    return AnchorResult(o, lse, index, anchors)
