"""AnchorAttention (arXiv 2505.23520): stripe-sparse causal attention for long-context prefill.

1. **Anchor**: each query row's largest score over its dense region (initial tokens + its own
   group), a cheap near-maximum of the full row.
2. **Identification**, one rule per ``config.identify``, ``theta`` in natural-log units:

   * ``rows`` (default): key ``j`` is kept when some row ``i`` of the group comes within
     ``theta`` of its own anchor, ``q_i · k_j * scale - a_i >= -theta``. Every row's own rule,
     united over the rows that share the group's stripes.
   * ``pooled`` (the paper's): the mean query of each tile against the tile's mean anchor,
     ``q̄_t · k_j * scale - ā_t >= -theta`` for some tile ``t`` of the group; ``block_m`` times
     cheaper, but the mean query misses keys single rows need (SmolLM2-135M, 4k tokens: +1.3%
     perplexity at density 0.283 against +0.45% for ``rows`` at 0.280).
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


def row_scores(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, regions: StripeRegions,
               scale: float) -> torch.Tensor:
    """``max_i (q_i · k_j * scale - a_i)`` over each group's rows ``i``, for every stripe key ``j``.

    Args:
        anchors: [B, Hq, N] each row's anchor (:func:`anchors_reference`).
    Returns:
        [B, Hq, groups, N] fp32 (natural-log units; compare with ``-theta``), ``-inf`` outside
        each group's stripe range ``[init, L_g)``. One group at a time: memory [B, Hq, G, N].
    """
    B, Hq, N, _ = q.shape
    k = kv_heads(k, Hq).float()
    out = torch.full((B, Hq, regions.n_groups(N), N), -math.inf, device=q.device)
    for g in range(regions.n_groups(N)):
        lo, hi = regions.init, regions.local_start(g)
        if lo < hi:
            rows = slice(g * regions.group, min((g + 1) * regions.group, N))
            s = q[:, :, rows].float() @ k[:, :, lo:hi].transpose(-1, -2) * scale - anchors[:, :, rows, None]
            out[:, :, g, lo:hi] = s.amax(dim=2)
    return out


SCORES = {"rows": row_scores, "pooled": pooled_scores}  # AnchorConfig.identify -> scores per (group, key)


def identify_reference(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, regions: StripeRegions,
                       theta: float, scale: float, identify: str) -> StripeIndex:
    """Kept stripe keys: the ``identify`` rule's score (:data:`SCORES`) within ``theta`` of the
    anchor, inside the stripe range."""
    scores = SCORES[identify](q, k, anchors, regions, scale)
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

        return AnchorResult(*anchor_attention_triton(q, k, v, regions, config.theta, scale, config.identify))
    anchors = anchors_reference(q, k, regions, scale)
    index = identify_reference(q, k, anchors, regions, config.theta, scale, config.identify)
    o, lse = stripe_attention_reference(q, k, v, regions, index, scale)
    return AnchorResult(o, lse, index, anchors)
