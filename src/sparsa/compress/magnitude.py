"""Magnitude pruning: keep the largest |w| per layer (unstructured), per group (N:M) or per block.

Pruning (the ``prune_*`` masks) is kept apart from encoding (the format's ``from_dense``).
"""

import torch

from sparsa.compress.config import MagnitudeConfig, Pattern
from sparsa.compress.registry import register_method
from sparsa.formats.base import Format
from sparsa.formats.bitmap import Bitmap
from sparsa.formats.block_sparse import BlockSparse, check_block
from sparsa.formats.nm import NM, check_nm


def keep_count(total: int, sparsity: float) -> int:
    """How many of ``total`` items survive pruning at ``sparsity``."""
    return total - int(round(total * sparsity))


def prune_unstructured(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """[out, in] bool mask keeping the ``(1 - sparsity)`` share of largest |w| in the whole layer."""
    keep = torch.zeros(W.numel(), dtype=torch.bool, device=W.device)
    keep[W.abs().reshape(-1).topk(keep_count(W.numel(), sparsity)).indices] = True
    return keep.view(W.shape)


def prune_nm(W: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[out, in] bool mask keeping the ``n`` largest |w| of every ``m`` consecutive inputs."""
    groups = W.abs().reshape(W.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.view(W.shape)


def prune_blocks(W: torch.Tensor, block: tuple[int, int], sparsity: float) -> torch.Tensor:
    """[out, in] bool mask keeping the ``(1 - sparsity)`` share of ``R x C`` blocks of largest L2 norm."""
    (r, c), (R, C) = block, (W.shape[0] // block[0], W.shape[1] // block[1])
    norms = W.float().reshape(R, r, C, c).square().sum(dim=(1, 3)).reshape(-1)  # [R * C]
    keep = torch.zeros(R * C, dtype=torch.bool, device=W.device)
    keep[norms.topk(keep_count(R * C, sparsity)).indices] = True
    return keep.view(R, 1, C, 1).expand(R, r, C, c).reshape(W.shape)


def encode_pattern(Q: torch.Tensor, pattern: Pattern, dtype: torch.dtype, *, where: str) -> Format:
    """Store a pruned weight ``Q: [out, in]`` in the format of its pattern (values in ``dtype``)."""
    Q = Q.to(dtype)
    if pattern.kind == "nm":
        return NM.from_dense(Q, n=pattern.n, m=pattern.m, where=where)
    if pattern.kind == "block":
        return BlockSparse.from_dense(Q, block=pattern.block, where=where)
    return Bitmap.from_dense(Q)


@register_method(MagnitudeConfig, reference_url="https://arxiv.org/abs/1506.02626")
def magnitude(W: torch.Tensor, config: MagnitudeConfig, *, where: str) -> Format:
    """Prune ``W: [out, in]`` by magnitude and encode it in the format of the pattern."""
    pattern = config.parsed_pattern
    if pattern.kind == "nm":
        check_nm(pattern.n, pattern.m, W.shape[1], where)
        keep = prune_nm(W, pattern.n, pattern.m)
    elif pattern.kind == "block":
        check_block(tuple(W.shape), pattern.block, where)
        keep = prune_blocks(W, pattern.block, config.sparsity)
    else:
        keep = prune_unstructured(W, config.sparsity)
    return encode_pattern(W * keep, pattern, W.dtype, where=where)
