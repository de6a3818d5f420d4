"""Importance-weighted grid search for group grids (the idea of llama.cpp's imatrix quantization,
reimplemented from its description): per group, try several grids near the plain rule's, refit
each candidate by weighted least squares on its own codes, and keep the one of least weighted
error ``sum_i h_i (w_i - q_i s - m)^2``, ``h_i`` the Hessian diagonal of input column ``i`` (how
much its errors cost at the layer's output). GPTQ then rounds on the chosen grid.

* symmetric grids (Q4_0, Q5_0, Q8_0, Q6_K's sub-blocks): the scale that puts the largest weight
  at each of several code positions near the grid's end, refit on ``q``;
* asymmetric grids (Q4_1, Q5_1, Q4_K/Q5_K's sub-blocks): the min-max range stretched or shrunk by
  tenths of a code, scale and minimum refit together (the minimum kept at or below 0 when
  ``clip_minimum``, as k-quants store ``-dmin * m``).
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


def weighted_fit(Wg: torch.Tensor, h: torch.Tensor, q: torch.Tensor, clip_minimum: bool):
    """The ``(scale, minimum)`` [out, G] minimizing ``sum h (w - q scale - minimum)^2`` for fixed codes."""
    sh, sq, sw = h.sum(-1), (h * q).sum(-1), (h * Wg).sum(-1)
    sqq, sqw = (h * q * q).sum(-1), (h * q * Wg).sum(-1)
    det = sh * sqq - sq * sq
    ok = det > 1e-12 * sh * sqq
    scale = torch.where(ok, (sh * sqw - sq * sw) / torch.where(ok, det, torch.ones_like(det)), 0)
    minimum = torch.where(ok, (sw - scale * sq) / sh.clamp(min=1e-30), 0)
    if clip_minimum:  # a positive minimum is not storable: refit the scale alone through 0
        positive = minimum > 0
        scale = torch.where(positive, sqw / sqq.clamp(min=1e-30), scale)
        minimum = torch.where(positive, 0, minimum)
    return scale, minimum


def weighted_asymmetric_stats(Wg: torch.Tensor, h: torch.Tensor, bits: int, *, clip_minimum: bool = False,
                              dtype: torch.dtype = torch.float16):
    """Asymmetric grids ``w = q * scale + minimum`` (codes 0 .. 2^bits - 1) of each group of ``Wg``
    [out, G, g] weighted by ``h`` [G, g] (>= 0).

    Returns:
        scale, minimum: [out, G] in ``dtype`` (fp16 as Q4_1 stores them; fp32 for k-quant
        sub-blocks, whose 6-bit rounding comes after); never of larger weighted error than the
        min-max grid (which is one of the candidates).
    """
    Wg, h = Wg.float(), h.float()[None]
    nmax = 2**bits - 1
    low = Wg.amin(dim=-1)
    low = low.clamp(max=0) if clip_minimum else low
    span = Wg.amax(dim=-1) - low

    def error_of(scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
        s, m = scale.float()[..., None], minimum.float()[..., None]
        q = torch.where(s > 0, (Wg - m) / torch.where(s > 0, s, torch.ones_like(s)), 0).round().clamp(0, nmax)
        return (h * (Wg - s * q - m) ** 2).sum(-1)

    best_s, best_m = (span / nmax).to(dtype), low.to(dtype)
    best_err = error_of(best_s, best_m)
    for k in range(-STEPS, STEPS + 1):
        step = span / (nmax + 0.1 * k)  # the range spans nmax + k/10 codes
        q = torch.where(step[..., None] > 0, (Wg - low[..., None]) / torch.where(step > 0, step, 1)[..., None],
                        0).round().clamp(0, nmax)
        scale, minimum = weighted_fit(Wg, h, q, clip_minimum)
        scale, minimum = scale.clamp(min=0).to(dtype), minimum.to(dtype)
        err = error_of(scale, minimum)
        better = err < best_err
        best_s, best_m = torch.where(better, scale, best_s), torch.where(better, minimum, best_m)
        best_err = torch.where(better, err, best_err)
    return best_s, best_m
