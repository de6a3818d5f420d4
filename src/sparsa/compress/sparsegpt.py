"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): OBS pruning with weight update.

The mask is chosen as the solve reaches it, from the saliency ``w² / Hinv_jj²`` of the current
(already updated) weights: per 128-column block for unstructured sparsity (one threshold per
block, so rows differ), per group of M columns for N:M, per RxC tile for block sparsity. Pruned
weights become 0 and their error flows onto the columns not yet visited (``obs_solve``).
"""

import torch

from sparsa.compress.config import SparseGPTConfig
from sparsa.compress.hessian import prepare_hessian
from sparsa.compress.magnitude import keep_count
from sparsa.compress.obs import obs_solve
from sparsa.compress.registry import register_method
from sparsa.errors import SparsaError
from sparsa.formats.base import Format
from sparsa.formats.bitmap import Bitmap
from sparsa.formats.block_sparse import BlockSparse, check_block
from sparsa.formats.nm import NM, check_nm

BLOCKSIZE = 128


class SparseGPTStep:
    """Column step: zero the masked weights of the column; masks are drawn lazily by pattern."""

    def __init__(self, out_features: int, pattern, sparsity: float, device):
        self.pattern, self.sparsity = pattern, sparsity
        self.mask1 = None  # [out, block] bool, True = pruned
        self.device = device

    def begin_block(self, W1, Hinv1, start):
        saliency = W1.square() / torch.diag(Hinv1)[None, :].square()  # [out, b]
        self.mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if self.pattern.kind == "unstructured":
            flat = self.mask1.view(-1)
            flat[saliency.reshape(-1).topk(saliency.numel() - keep_count(saliency.numel(), self.sparsity),
                                           largest=False).indices] = True
        elif self.pattern.kind == "block":
            (r, c), out_features = self.pattern.block, W1.shape[0]
            tiles = saliency.view(out_features // r, r, -1, c).sum(dim=(1, 3))  # [out/r, b/c]
            pruned = torch.zeros(tiles.numel(), dtype=torch.bool, device=W1.device)
            pruned[tiles.reshape(-1).topk(tiles.numel() - keep_count(tiles.numel(), self.sparsity),
                                          largest=False).indices] = True
            self.mask1 = pruned.view(out_features // r, 1, -1, 1).expand(-1, r, -1, c).reshape(W1.shape)

    def column(self, W1, Hinv1, i, j):
        pattern = self.pattern
        if pattern.kind == "nm" and i % pattern.m == 0:
            group = W1[:, i:i + pattern.m].square() / torch.diag(Hinv1)[i:i + pattern.m][None, :].square()
            lowest = group.topk(pattern.m - pattern.n, dim=1, largest=False).indices
            self.mask1[:, i:i + pattern.m].scatter_(1, lowest, True)
        return torch.where(self.mask1[:, i], torch.zeros_like(W1[:, i]), W1[:, i])


def sparsegpt_solve(W: torch.Tensor, H: torch.Tensor, config: SparseGPTConfig, *, where: str):
    """Prune ``W: [out, in]`` given ``H``; returns (Q [out, in] fp32 in original order, loss [out])."""
    pattern = config.parsed_pattern
    blocksize = BLOCKSIZE
    if pattern.kind == "nm":
        check_nm(pattern.n, pattern.m, W.shape[1], where)
        blocksize = pattern.m * max(1, BLOCKSIZE // pattern.m)
    elif pattern.kind == "block":
        check_block(tuple(W.shape), pattern.block, where)
        blocksize = pattern.block[1] * max(1, BLOCKSIZE // pattern.block[1])
    prep = prepare_hessian(H, percdamp=config.percdamp, act_order=False, where=where)
    W = W.float().clone()
    W[:, prep.dead] = 0
    step = SparseGPTStep(W.shape[0], pattern, config.sparsity, W.device)
    return obs_solve(W, prep.Hinv, step, blocksize)


def encode_pattern(Q: torch.Tensor, config, dtype: torch.dtype, *, where: str) -> Format:
    """Store a pruned weight in the format of its pattern (values in ``dtype``)."""
    pattern, Q = config.parsed_pattern, Q.to(dtype)
    if pattern.kind == "nm":
        return NM.from_dense(Q, n=pattern.n, m=pattern.m, where=where)
    if pattern.kind == "block":
        return BlockSparse.from_dense(Q, block=pattern.block, where=where)
    return Bitmap.from_dense(Q)


@register_method(SparseGPTConfig, reference_url="https://arxiv.org/abs/2301.00774")
def sparsegpt(W: torch.Tensor, config: SparseGPTConfig, *, where: str, H: torch.Tensor) -> Format:
    """SparseGPT-prune one weight into Bitmap / NM / BlockSparse."""
    Q, _ = sparsegpt_solve(W, H, config, where=where)
    if not torch.isfinite(Q).all():
        raise SparsaError(f"{where}: SparseGPT produced inf/nan weights; raise --percdamp")
    return encode_pattern(Q, config, W.dtype, where=where)
