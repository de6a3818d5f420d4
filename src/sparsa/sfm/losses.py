"""Robust losses rho(s) of the squared residual norm s = |r|², as Ceres defines them (scale a)."""

import torch


def robust(s: torch.Tensor, loss: str, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho(s), rho'(s)) for s [M] >= 0.

    trivial: s. huber: s for s <= a², else 2a√s - a². cauchy: a² log(1 + s/a²).
    soft_l1: 2a² (√(1 + s/a²) - 1).
    All have rho'' <= 0, so Ceres' Triggs correction reduces to scaling r and J by √rho'
    (the IRLS weights used by the solver).
    """
    b = a * a
    if loss == "trivial":
        return s, torch.ones_like(s)
    if loss == "huber":
        root = torch.sqrt(s.clamp(min=b))
        inside = s <= b
        return torch.where(inside, s, 2 * a * root - b), torch.where(inside, torch.ones_like(s), a / root)
    if loss == "cauchy":
        return b * torch.log1p(s / b), 1 / (1 + s / b)
    if loss == "soft_l1":
        root = torch.sqrt(1 + s / b)
        return 2 * b * (root - 1), 1 / root
    raise ValueError(f"unknown loss {loss!r}")
