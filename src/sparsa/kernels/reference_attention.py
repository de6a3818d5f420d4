"""Stripe-sparse attention in plain PyTorch: the ground truth the Triton kernels are tested against.

Layouts follow ``torch.nn.functional.scaled_dot_product_attention``: ``q`` [B, Hq, N, D], ``k`` and
``v`` [B, Hkv, N, D] with ``Hq % Hkv == 0`` (query head ``h`` reads KV head ``h // (Hq // Hkv)``).
Work goes one group of query rows at a time, so memory stays at [B, Hq, G, N] scores.
"""

import math

import torch

from sparsa.errors import SparsaError
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(B, Hq, Hkv, N, D) after checking the layouts agree."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise SparsaError(f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                          "expected q [B, Hq, N, D] and k, v [B, Hkv, N, D]")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D or Hq % k.shape[1]:
        raise SparsaError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree (batch, length, "
                          "head dim, or query heads not a multiple of KV heads)")
    return B, Hq, k.shape[1], N, D


def kv_heads(x: torch.Tensor, hq: int) -> torch.Tensor:
    """[B, Hkv, N, D] -> [B, Hq, N, D] (each KV head repeated for its query heads)."""
    return x.repeat_interleave(hq // x.shape[1], dim=1)


def group_logits(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, g: int, scale: float):
    """Scaled scores of group ``g``'s rows against keys ``[0, row_end)``: ([B, Hq, rows, keys] fp32,
    rows slice). ``k`` is already expanded to the query heads."""
    n = q.shape[2]
    r0, r1 = g * regions.group, min((g + 1) * regions.group, n)
    return (q[:, :, r0:r1].float() @ k[:, :, :r1].float().transpose(-1, -2)) * scale, slice(r0, r1)


def anchors_reference(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float | None = None):
    """The anchor of every query row: its largest scaled score over the dense region.

    Returns:
        [B, Hq, N] fp32, natural-log units (``max_j q_i . k_j * scale``).
    """
    B, Hq, _, N, D = check_qkv(q, k, k)
    scale = 1 / math.sqrt(D) if scale is None else scale
    k = kv_heads(k, Hq)
    out = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    dense = regions.dense_mask(N, q.device)
    for g in range(regions.n_groups(N)):
        logits, rows = group_logits(q, k, regions, g, scale)
        out[:, :, rows] = logits.masked_fill(~dense[rows, : rows.stop], -math.inf).amax(dim=-1)
    return out


def stripe_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions,
                               index: StripeIndex | None, scale: float | None = None):
    """Softmax attention of every row over its dense region plus its group's stripe keys.

    Args:
        q, k, v: see the module docstring.
        index: chosen stripe keys per (batch, query head, group); None gathers none (init + local).
        scale: score scale (default ``1/sqrt(D)``).
    Returns:
        (O [B, Hq, N, D] in ``q.dtype``, LSE [B, Hq, N] fp32 natural-log sum of exp of the kept scores).
    """
    B, Hq, _, N, D = check_qkv(q, k, v)
    scale = 1 / math.sqrt(D) if scale is None else scale
    k, v = kv_heads(k, Hq), kv_heads(v, Hq)
    stripes = None if index is None else index.to_mask(N)  # [B, Hq, groups, N]
    dense = regions.dense_mask(N, q.device)
    o = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    for g in range(regions.n_groups(N)):
        logits, rows = group_logits(q, k, regions, g, scale)
        keep = dense[rows, : rows.stop].expand(B, Hq, -1, -1)
        if stripes is not None:
            keep = keep | stripes[:, :, g, None, : rows.stop]
        logits = logits.masked_fill(~keep, -math.inf)
        lse[:, :, rows] = torch.logsumexp(logits, dim=-1)
        p = torch.exp(logits - lse[:, :, rows, None])
        o[:, :, rows] = (p @ v[:, :, : rows.stop].float()).to(q.dtype)
    return o, lse
