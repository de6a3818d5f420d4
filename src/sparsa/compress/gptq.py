"""GPTQ (Frantar et al. 2022, arXiv 2210.17323): group quantization by the OBS engine.

Each column is rounded to its group's min-max grid and the rounding error is spread over the
columns not yet quantized (``obs_solve``). Groups are fitted when the solve reaches them, or
once on the original weights (``static_groups``, implied by act_order with groups, so that
every group keeps whole original columns and the result is a plain ``Quant``). A group size that
does not divide the input width leaves a shorter last group.
"""

import torch

from sparsa.compress.config import GPTQConfig
from sparsa.compress.grid_search import weighted_asymmetric_stats, weighted_symmetric_stats
from sparsa.compress.hessian import prepare_hessian
from sparsa.compress.obs import obs_solve
from sparsa.compress.registry import register_method
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.kquant import K_TYPES, SUPER, KQuant, check_shape, fit_grid
from sparsa.formats.quant import Quant, grid_codes, grid_stats, group_count, pad_groups

BLOCKSIZE = 128


class GPTQStep:
    """Column step: round to the group grid; records codes (solve order) and grids (original order)."""

    def __init__(self, W: torch.Tensor, bits: int, group_size: int, perm: torch.Tensor, static: bool,
                 symmetric: bool, absmax: bool = False, grid: tuple[torch.Tensor, torch.Tensor] | None = None):
        out_features, in_features = W.shape
        self.bits, self.group_size, self.perm, self.static = bits, group_size, perm, static or grid is not None
        self.symmetric, self.absmax = symmetric, absmax
        self.codes = torch.zeros(out_features, in_features, dtype=torch.uint8, device=W.device)
        self.scale = torch.zeros(out_features, group_count(in_features, group_size), dtype=torch.float16,
                                 device=W.device)
        self.minimum = torch.zeros_like(self.scale)
        if grid is not None:  # a fixed grid per group: (scale, minimum) [out, G] fp32 (k-quants)
            self.scale, self.minimum = grid
        elif static:  # W here is in original column order
            self.scale, self.minimum = grid_stats(pad_groups(W, group_size), bits, symmetric, absmax)

    def begin_block(self, W1, Hinv1, start):
        pass

    def column(self, W1, Hinv1, i, j):
        group = int(self.perm[j]) // self.group_size
        if not self.static and j % self.group_size == 0:  # identity order: group = j // group_size
            self.scale[:, group], self.minimum[:, group] = grid_stats(W1[:, i:i + self.group_size], self.bits,
                                                                     self.symmetric, self.absmax)
        scale, minimum = self.scale[:, group], self.minimum[:, group]
        codes = grid_codes(W1[:, i], scale, minimum, self.bits)
        self.codes[:, j] = codes.to(torch.uint8)
        return codes * scale.float() + minimum.float()


def fixed_grid(W: torch.Tensor, h: torch.Tensor, config: GPTQConfig, group_size: int, where: str):
    """``(grid, k-quant fields)`` fitted before the solve for a ggml ``config.grid``, else ``(None, None)``.

    Every grid is searched weighted by ``h`` [in], the Hessian diagonal
    (:mod:`~sparsa.compress.grid_search`):

    * symmetric 32-blocks (Q4_0, Q5_0, Q8_0): the block scales;
    * asymmetric 32-blocks (Q4_1, Q5_1): the block scales and minimums (fp16);
    * k-quants: the sub-block grids, then :func:`~sparsa.formats.kquant.fit_grid` rounds their
      scales to 6 bits (int8 for Q6_K) against each super-block's (its fields kept for packing),
      Q4_K/Q5_K's ``d`` and ``dmin`` searched weighted by what each sub-block's error costs.
    """
    if config.grid is None:
        return None, None
    out_features, in_features = W.shape
    h = h.clamp(min=0).to(W.device)
    if config.kquant:
        check_shape(config.kquant, (out_features, in_features), where)
        t = K_TYPES[config.kquant]
        Wg, hg = W.reshape(out_features, -1, t.sub), h.reshape(-1, t.sub)
        sub_weight = None
        if t.minimums:
            sub = weighted_asymmetric_stats(Wg, hg, t.bits, clip_minimum=True, dtype=torch.float32)
            # what an error in a sub-block's scale costs: sum h q^2 over its (ideal) codes; in its minimum: sum h
            s, m = sub[0][..., None], sub[1][..., None]
            q = torch.where(s > 0, (Wg - m) / torch.where(s > 0, s, 1), 0).clamp(0, 2**t.bits - 1)
            sub_weight = tuple(x.reshape(-1, t.subs) for x in ((hg * q * q).sum(-1), hg.sum(-1).expand_as(sub[0])))
        else:
            sub = weighted_symmetric_stats(Wg, hg, t.bits)
        sub = tuple(x.reshape(-1, t.subs) for x in sub)
        *kfields, scale, minimum = fit_grid(config.kquant, W.reshape(-1, SUPER), sub, sub_weight)
        return (scale.reshape(out_features, -1), minimum.reshape(out_features, -1)), kfields
    Wg, hg = pad_groups(W, group_size), pad_groups(h[None], group_size)[0]
    if config.symmetric:
        return weighted_symmetric_stats(Wg, hg, config.bits, config.absmax), None
    return weighted_asymmetric_stats(Wg, hg, config.bits), None


def gptq_solve(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig, *, where: str):
    """Quantize ``W: [out, in]`` given ``H: [in, in]``.

    Returns:
        (Quant, Q [out, in] fp32 dequantized weight in original order, loss [out]).
    """
    out_features, in_features = W.shape
    group_size = config.group_size or in_features
    prep = prepare_hessian(H, percdamp=config.percdamp, act_order=config.act_order, where=where)
    W = W.float().clone()
    W[:, prep.dead] = 0
    static = config.static_groups or (config.act_order and group_size < in_features)
    grid, kfields = fixed_grid(W, torch.diag(H), config, group_size, where)
    step = GPTQStep(W, config.bits, group_size, prep.perm, static, config.symmetric, config.absmax, grid)
    blocksize = group_size * max(1, BLOCKSIZE // group_size)  # groups never straddle a block
    if config.error_feedback:
        Qp, loss = obs_solve(W[:, prep.perm], prep.Hinv, step, blocksize)
    else:  # round every column on its grid, no OBS update (the grid search's weighting is the only data used)
        Wp = W[:, prep.perm]
        Qp = torch.stack([step.column(Wp, None, j, j) for j in range(in_features)], dim=1)
        loss = ((Wp - Qp) ** 2 / torch.diag(prep.Hinv) ** 2).sum(dim=1) / 2
    codes, Q = torch.empty_like(step.codes), torch.empty_like(Qp)
    codes[:, prep.perm], Q[:, prep.perm] = step.codes, Qp
    if kfields is not None:
        return KQuant.from_fields(config.kquant, (out_features, in_features), *kfields,
                                  codes.reshape(-1, SUPER)), Q, loss
    fmt = Quant(shape=(out_features, in_features), bits=config.bits, group_size=group_size,
                codes=pack_bits(codes, config.bits), scale=step.scale,
                minimum=None if config.symmetric else step.minimum, symmetric=config.symmetric)
    return fmt, Q, loss


@register_method(GPTQConfig, reference_url="https://arxiv.org/abs/2210.17323")
def gptq(W: torch.Tensor, config: GPTQConfig, *, where: str, H: torch.Tensor) -> Quant:
    """GPTQ-quantize one weight (see :func:`gptq_solve`)."""
    return gptq_solve(W, H, config, where=where)[0]
