"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): OBS pruning with weight update.

The mask is chosen as the solve reaches it, from the saliency ``w² / Hinv_jj²`` of the current
(already updated) weights: per 128-column block for unstructured sparsity (one threshold per
block, so rows differ), per group of M columns for N:M, per RxC tile for block sparsity. Pruned
weights become 0 and their error flows onto the columns not yet visited (``obs_solve``).
With ``bits`` the kept weights are also rounded to per-group min-max grids fitted when the solve
reaches each group (joint sparse + quantized, §4 of the paper), stored as ``SparseQuant``.
"""

import math

import torch

from sparsa.compress.config import SparseGPTConfig
from sparsa.compress.hessian import prepare_hessian
from sparsa.compress.magnitude import encode_pattern, keep_count
from sparsa.compress.obs import obs_solve
from sparsa.compress.registry import register_method
from sparsa.errors import SparsaError
from sparsa.formats.base import Format
from sparsa.formats.block_sparse import check_block
from sparsa.formats.nm import check_nm
from sparsa.formats.quant import grid_codes, group_count, minmax_stats
from sparsa.formats.sparse_quant import SparseQuant

BLOCKSIZE = 128


class SparseGPTStep:
    """Column step: zero the masked weights of the column (masks drawn lazily by pattern) and,
    with ``bits``, round the kept ones to their group's grid; records mask, codes and grids."""

    def __init__(self, W: torch.Tensor, pattern, sparsity: float, bits: int | None, group_size: int):
        self.pattern, self.sparsity, self.bits, self.group_size = pattern, sparsity, bits, group_size
        self.mask1 = None  # [out, block] bool, True = pruned
        self.pruned = torch.zeros_like(W, dtype=torch.bool)
        if bits is not None:
            self.codes = torch.zeros_like(W, dtype=torch.uint8)
            groups = (W.shape[0], group_count(W.shape[1], group_size))
            self.scale = torch.zeros(groups, dtype=torch.float16, device=W.device)
            self.minimum = torch.zeros_like(self.scale)

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
        w, pruned = W1[:, i], self.mask1[:, i]
        self.pruned[:, j] = pruned
        if self.bits is not None:
            group = j // self.group_size
            if j % self.group_size == 0:
                self.scale[:, group], self.minimum[:, group] = minmax_stats(W1[:, i:i + self.group_size], self.bits)
            codes = grid_codes(w, self.scale[:, group], self.minimum[:, group], self.bits)
            self.codes[:, j] = codes.to(torch.uint8)
            w = codes * self.scale[:, group].float() + self.minimum[:, group].float()
        return torch.where(pruned, torch.zeros_like(w), w)


def sparsegpt_solve(W: torch.Tensor, H: torch.Tensor, config: SparseGPTConfig, *, where: str):
    """Prune (and quantize) ``W: [out, in]`` given ``H``.

    Returns:
        (Q [out, in] fp32 new weights, loss [out], step holding ``pruned`` and, with bits, the codes).
    """
    pattern = config.parsed_pattern
    align = 1  # the block size must hold whole N:M groups, tile columns and quantization groups
    if pattern.kind == "nm":
        check_nm(pattern.n, pattern.m, W.shape[1], where)
        align = pattern.m
    elif pattern.kind == "block":
        check_block(tuple(W.shape), pattern.block, where)
        align = pattern.block[1]
    if config.bits is not None:
        align = math.lcm(align, config.group_size)
    prep = prepare_hessian(H, percdamp=config.percdamp, act_order=False, where=where)
    W = W.float().clone()
    W[:, prep.dead] = 0
    step = SparseGPTStep(W, pattern, config.sparsity, config.bits, config.group_size)
    Q, loss = obs_solve(W, prep.Hinv, step, align * max(1, BLOCKSIZE // align))
    return Q, loss, step


@register_method(SparseGPTConfig, reference_url="https://arxiv.org/abs/2301.00774")
def sparsegpt(W: torch.Tensor, config: SparseGPTConfig, *, where: str, H: torch.Tensor) -> Format:
    """SparseGPT-prune one weight into Bitmap / NM / BlockSparse, or SparseQuant with ``bits``."""
    Q, _, step = sparsegpt_solve(W, H, config, where=where)
    if not torch.isfinite(Q).all():
        raise SparsaError(f"{where}: SparseGPT produced inf/nan weights; raise --percdamp")
    if config.bits is not None:
        return SparseQuant.from_codes(kept=~step.pruned, codes=step.codes, scale=step.scale, minimum=step.minimum,
                                      bits=config.bits, group_size=config.group_size, where=where)
    return encode_pattern(Q, config.parsed_pattern, W.dtype, where=where)
