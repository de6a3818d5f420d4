"""Similarity alignment of camera centres (Umeyama 1991), to compare reconstructions up to gauge."""

import torch

from sparsa.data.scene import Scene


def camera_centres(scene: Scene) -> torch.Tensor:
    """[I, 3] centres ``c = -Rᵀ t``."""
    R = scene.rotation_matrices()
    return -(R.transpose(1, 2) @ scene.translations[:, :, None])[..., 0]


def align_similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(s, R, t) minimising Σ |s R src_i + t - dst_i|² for src, dst [N, 3] (N >= 3, not collinear)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = torch.linalg.svd(b.T @ a / len(src))
    E = torch.eye(3, dtype=src.dtype)
    if float(torch.linalg.det(U @ Vt)) < 0:
        E[2, 2] = -1
    R = U @ E @ Vt
    s = float((S * E.diagonal()).sum() / (a * a).sum(-1).mean())
    return s, R, mu_d - s * R @ mu_s


def centre_errors(scene: Scene, reference: Scene) -> torch.Tensor:
    """[I] distance of each camera centre of ``scene`` to ``reference``'s after the best similarity,
    in ``reference`` units."""
    src, dst = camera_centres(scene), camera_centres(reference)
    s, R, t = align_similarity(src, dst)
    return (s * src @ R.T + t - dst).norm(dim=-1)
