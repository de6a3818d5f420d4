"""SpQR (Dettmers et al. 2023, arXiv 2306.03078): GPTQ with tiny groups, quantized statistics and
fp16 outliers.

On the OBS engine, in act-order: at every β1-th column the group ``W[:, j:j+β1]`` gets a
per-row min-max grid (scale ``s``, unrounded zero ``z``) fitted without its likely outliers
(leave-one-out, §4.2), and ``s`` and ``z`` are themselves quantized to ``stat_bits`` over runs
of β2 rows (§4.1). Each column is rounded, ``w ≈ s (q - z)``; a weight whose Hessian-weighted
error ``((w - q̂) / Hinv_jj)²`` exceeds ``τ · mean_j(var(W_:j) / Hinv_jj²)`` stays in fp16 as an
outlier (Alg. 1); errors flow onto later columns as in GPTQ.
"""

import torch

from sparsa.compress.config import SpQRConfig
from sparsa.compress.hessian import prepare_hessian
from sparsa.compress.obs import obs_solve
from sparsa.compress.registry import register_method
from sparsa.formats.quant import check_group_size
from sparsa.formats.spqr import SpQR, check_stat_group_size, second_level_quantize

BLOCKSIZE = 128


def row_grid(Wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min-max grid of ``Wg: [..., g]``: scale [...] (> 0) and unrounded zero [...]."""
    lo, hi = Wg.amin(dim=-1), Wg.amax(dim=-1)
    scale = (hi - lo) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, -lo / scale


def round_to_grid(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int):
    """Codes ``clamp(round(W/s + z))`` and the dequantized ``s (q - z)`` (scale 0 -> code 0)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(W / safe + zero).clamp_(0, 2**bits - 1)
    return codes, scale * (codes - zero)


def leave_one_out_gain(Wg: torch.Tensor, d: torch.Tensor, bits: int) -> torch.Tensor:
    """How much the group's Hessian-weighted rounding error ``Σ ((q - w) / d)²`` falls when each
    weight is left out of the grid fit (and of the sum).

    Args:
        Wg: [out, g] group weights; d: [g] ``Hinv_jj`` of the group's columns.
    Returns:
        [out, g] error reduction per left-out weight.
    """
    g = Wg.shape[1]
    scale, zero = row_grid(Wg, bits)
    base = ((round_to_grid(Wg, scale[:, None], zero[:, None], bits)[1] - Wg) / d).square().sum(1)  # [out]
    others = ~torch.eye(g, dtype=torch.bool, device=Wg.device)  # [g, g]: row k = all but k
    Wloo = Wg[:, None, :].expand(-1, g, -1)[:, others].view(-1, g, g - 1)  # [out, g, g-1]
    dloo = d[None, :].expand(g, -1)[others].view(g, g - 1)  # [g, g-1]
    scale, zero = row_grid(Wloo, bits)
    loo = ((round_to_grid(Wloo, scale[..., None], zero[..., None], bits)[1] - Wloo) / dloo).square().sum(-1)
    return base[:, None] - loo


class SpQRStep:
    """Column step of SpQR; records codes, two-level statistics and outliers (solve order)."""

    def __init__(self, W: torch.Tensor, Hinv: torch.Tensor, config: SpQRConfig, where: str):
        out_features, in_features = W.shape
        self.config, self.where = config, where
        groups = in_features // config.group_size
        self.codes = torch.zeros(out_features, in_features, dtype=torch.uint8, device=W.device)
        self.outliers = torch.zeros(out_features, in_features, dtype=torch.bool, device=W.device)
        self.stat_codes = {k: torch.zeros(out_features, groups, dtype=torch.uint8, device=W.device)
                           for k in ("scale", "zero")}
        runs = out_features // config.stat_group_size
        self.stats = {k: torch.zeros(runs, groups, 2, dtype=torch.float16, device=W.device) for k in ("scale", "zero")}
        outlier_scale = (W.var(dim=0) / torch.diag(Hinv).square()).mean()
        self.threshold = config.outlier_threshold * outlier_scale
        self.scale = self.zero = None  # current group's decoded statistics, [out]

    def begin_block(self, W1, Hinv1, start):
        pass

    def fit_group(self, Wg: torch.Tensor, d: torch.Tensor, group: int, where: str) -> None:
        """Fit the group's grid (likely outliers replaced by their row's mean) and quantize its stats."""
        cfg = self.config
        if not cfg.simplified_outliers:
            likely = leave_one_out_gain(Wg, d, cfg.bits) > self.threshold
            kept = (~likely).float()
            row_mean = (Wg * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True).clamp_min(1)
            Wg = torch.where(likely, row_mean, Wg)
        scale, zero = row_grid(Wg, cfg.bits)
        decoded = []
        for name, value in (("scale", scale), ("zero", zero)):
            codes, stats, v_hat = second_level_quantize(value[:, None], cfg.stat_bits, cfg.stat_group_size,
                                                        where=f"{where} {name}s")
            self.stat_codes[name][:, group], self.stats[name][:, group] = codes[:, 0], stats[:, 0]
            decoded.append(v_hat[:, 0])
        self.scale, self.zero = decoded

    def column(self, W1, Hinv1, i, j):
        g = self.config.group_size
        if j % g == 0:
            self.fit_group(W1[:, i:i + g], torch.diag(Hinv1)[i:i + g], j // g, self.where)
        w = W1[:, i]
        codes, q = round_to_grid(w, self.scale, self.zero, self.config.bits)
        outlier = ((q - w) / Hinv1[i, i]).square() > self.threshold
        self.codes[:, j], self.outliers[:, j] = codes.to(torch.uint8), outlier
        return torch.where(outlier, w.half().float(), q)  # outliers are stored in fp16


def spqr_solve(W: torch.Tensor, H: torch.Tensor, config: SpQRConfig, *, where: str):
    """SpQR-compress ``W: [out, in]`` given ``H``; returns (SpQR, Q [out, in] fp32 original order, loss)."""
    out_features, in_features = W.shape
    check_group_size(in_features, config.group_size, where)
    check_stat_group_size(out_features, config.stat_group_size, where)
    prep = prepare_hessian(H, percdamp=config.percdamp, act_order=config.act_order, where=where)
    W = W.float().clone()
    W[:, prep.dead] = 0
    Wp = W[:, prep.perm]
    step = SpQRStep(Wp, prep.Hinv, config, where)
    blocksize = config.group_size * max(1, BLOCKSIZE // config.group_size)
    Qp, loss = obs_solve(Wp, prep.Hinv, step, blocksize)
    Q, outliers = torch.empty_like(Qp), torch.empty_like(step.outliers)
    Q[:, prep.perm], outliers[:, prep.perm] = Qp, step.outliers
    fmt = SpQR.from_parts(codes=step.codes, scale_codes=step.stat_codes["scale"], zero_codes=step.stat_codes["zero"],
                          scale_stats=step.stats["scale"], zero_stats=step.stats["zero"], outlier_mask=outliers,
                          outlier_values_dense=Q, perm=prep.perm, bits=config.bits, group_size=config.group_size,
                          stat_bits=config.stat_bits, stat_group_size=config.stat_group_size, where=where)
    return fmt, Q, loss


@register_method(SpQRConfig, reference_url="https://arxiv.org/abs/2306.03078")
def spqr(W: torch.Tensor, config: SpQRConfig, *, where: str, H: torch.Tensor) -> SpQR:
    """SpQR-compress one weight (see :func:`spqr_solve`)."""
    return spqr_solve(W, H, config, where=where)[0]
