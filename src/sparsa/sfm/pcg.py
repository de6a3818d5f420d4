"""Preconditioned conjugate gradients for a symmetric positive-definite operator."""

from collections.abc import Callable

import torch


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
        precondition: Callable[[torch.Tensor], torch.Tensor], *, tolerance: float,
        max_iterations: int) -> tuple[torch.Tensor, int]:
    """Solve A x = b from x = 0 until |b - A x| <= tolerance * |b|.

    Returns:
        (x, iterations used).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    b_norm = float(b.norm())
    if b_norm == 0:
        return x, 0
    z = precondition(r)
    p = z.clone()
    rz = torch.dot(r, z)
    for it in range(1, max_iterations + 1):
        Ap = matvec(p)
        alpha = rz / torch.dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        if float(r.norm()) <= tolerance * b_norm:
            return x, it
        z = precondition(r)
        rz_next = torch.dot(r, z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return x, max_iterations
