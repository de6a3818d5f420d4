"""Wanda (Sun et al. 2023, arXiv 2306.11695): prune by ``|W_ij| · ‖X_j‖₂`` within each output row.

No weight update. The input norms come from the calibration Hessian's diagonal:
``H_jj = (2/n) Σ x_j²``, so ``‖X_j‖ ∝ sqrt(H_jj)`` (a common factor does not change the ranking).
"""

import torch

from sparsa.compress.config import WandaConfig
from sparsa.compress.magnitude import encode_pattern, keep_count
from sparsa.compress.registry import register_method
from sparsa.formats.base import Format
from sparsa.formats.nm import check_nm


def wanda_mask(W: torch.Tensor, H: torch.Tensor, config: WandaConfig, *, where: str) -> torch.Tensor:
    """[out, in] bool, True = kept: per row the ``(1 - s)`` share of largest scores (N:M: per group)."""
    score = W.float().abs() * torch.diag(H).float().clamp_min(0).sqrt()[None, :]
    pattern = config.parsed_pattern
    if pattern.kind == "nm":
        check_nm(pattern.n, pattern.m, W.shape[1], where)
        groups = score.view(W.shape[0], -1, pattern.m)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(pattern.n, dim=-1).indices, True)
        return keep.view(W.shape)
    keep = torch.zeros_like(score, dtype=torch.bool)
    return keep.scatter_(1, score.topk(keep_count(W.shape[1], config.sparsity), dim=1).indices, True)


@register_method(WandaConfig, reference_url="https://arxiv.org/abs/2306.11695")
def wanda(W: torch.Tensor, config: WandaConfig, *, where: str, H: torch.Tensor) -> Format:
    """Wanda-prune one weight into Bitmap / NM."""
    return encode_pattern(W * wanda_mask(W, H, config, where=where), config.parsed_pattern, W.dtype, where=where)
