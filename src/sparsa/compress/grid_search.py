"""Importance-weighted scale search for symmetric group grids (the idea of llama.cpp's imatrix
quantization, reimplemented from its description): per group, try the scales that put the largest
weight at each of several code positions near the grid's end, refit each candidate's scale by
weighted least squares on its own codes, and keep the one of least weighted error
``sum_i h_i (w_i - s q_i)^2``, ``h_i`` the Hessian diagonal of input column ``i`` (how much its
errors cost at the layer's output). GPTQ then rounds on the chosen grid with its error feedback.
"""

import torch

from sparsa.formats.quant import absmax_stats, symmetric_minimum, symmetric_stats

STEPS = 9  # candidates on each side of the plain rule, a tenth of a code apart


def weighted_symmetric_stats(Wg: torch.Tensor, h: torch.Tensor, bits: int, absmax: bool = False):
    """Symmetric grids of each group of ``Wg`` [out, G, g] weighted by ``h`` [G, g] (>= 0).

    Returns:
        scale, minimum: [out, G] fp16, as :func:`~sparsa.formats.quant.symmetric_stats` returns them;
        never of larger weighted error than the plain rule's (which is one of the candidates).
    """
    Wg, h = Wg.float(), h.float()[None]
    nmax = 2 ** (bits - 1)
    plain, _ = absmax_stats(Wg, bits) if absmax else symmetric_stats(Wg, bits)

    def error_of(scale: torch.Tensor) -> torch.Tensor:
        s = scale.float()[..., None]
        q = torch.where(s != 0, Wg / torch.where(s != 0, s, torch.ones_like(s)), 0).round().clamp(-nmax, nmax - 1)
        return (h * (Wg - s * q) ** 2).sum(-1)

    best, best_err = plain, error_of(plain)
    extreme = Wg.gather(-1, Wg.abs().argmax(dim=-1, keepdim=True))[..., 0]
    for k in range(-STEPS, STEPS + 1):
        step = extreme / -(nmax + 0.1 * k)  # the extreme lands at code position -(nmax + k/10)
        step = torch.where(step != 0, step, torch.ones_like(step))
        q = (Wg / step[..., None]).round().clamp(-nmax, nmax - 1)
        denom = (h * q * q).sum(-1)
        fitted = torch.where(denom > 0, (h * Wg * q).sum(-1) / denom.clamp(min=1e-30), step)
        scale = fitted.to(torch.float16)
        err = error_of(scale)
        better = err < best_err
        best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best, symmetric_minimum(best, bits)
