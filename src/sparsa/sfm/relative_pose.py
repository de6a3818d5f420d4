"""Relative poses of image pairs from their two-view geometry: E, or F with the intrinsics,
decomposed into (R, t) by a cheirality vote over the pair's inlier matches, all pairs at once.

Conventions: pair (i, j) gives ``cam_j_from_cam_i``, ``X_j = R X_i + t`` with |t| = 1, and
``x_jᵀ E x_i = 0`` with ``E = [t]x R`` on normalized rays. ``E = K_jᵀ F K_i`` turns a pixel
fundamental matrix into one (distortion is left to the rays: every ray is undistorted by
:func:`~sparsa.sfm.cameras.unproject`).

Decomposition (Hartley & Zisserman 9.6): ``E = U diag(1, 1, 0) Vᵀ`` with det U = det V = +1 gives
``R ∈ {U W Vᵀ, U Wᵀ Vᵀ}`` and ``t = ±U[:, 2]``. For each candidate and each inlier match the
depths ``d_i, d_j`` solving ``d_j b = d_i a + t`` in least squares (``a = R x_i``, ``b = x_j``, unit
rays, ``c = a·b``) are ``d_i = (c b·t - a·t) / (1 - c²)``, ``d_j = (b·t - c a·t) / (1 - c²)``; the
candidate with the most matches in front of both cameras wins. The triangulation angle of a match
is the angle between its two rays, ``acos(c)``.
"""

from dataclasses import dataclass

import numpy as np
import torch

from sparsa.data.colmap_db import ViewDatabase
from sparsa.data.rotations import quaternion_to_matrix
from sparsa.sfm.cameras import MODELS, unproject

CALIBRATED = 2  # TwoViewGeometry::CALIBRATED: E was estimated on normalized coordinates


VOTE_SAMPLE = 256  # matches per pair that vote on the pose and give its inlier share and median angle


@dataclass
class PairMatches:
    """A strided sample of at most ``VOTE_SAMPLE`` inlier matches per pair, as flat arrays.

    Args:
        pair: [M] int64 pair index of each sampled match.
        ray_i, ray_j: [M, 3] float64 unit rays of the match in camera i and camera j.
        total: [E] int64 inlier matches each pair has in the database.
    """

    pair: torch.Tensor
    ray_i: torch.Tensor
    ray_j: torch.Tensor
    total: torch.Tensor


@dataclass
class RelativePoses:
    """R: [E, 3, 3], t: [E, 3] unit (``cam_j_from_cam_i``); inliers: [E] int64 matches in front of both
    cameras under the chosen pose; angle_deg: [E] median triangulation angle of those;
    stored: [E] bool, the pose came from the database."""

    R: torch.Tensor
    t: torch.Tensor
    inliers: torch.Tensor
    angle_deg: torch.Tensor
    stored: torch.Tensor


def image_rays(db: ViewDatabase) -> list[torch.Tensor]:
    """Per image [n_i, 3] unit rays of its keypoints in its camera frame (distortion removed)."""
    out = []
    for i, xy in enumerate(db.keypoints):
        params = db.intrinsics[db.image_camera[i]].expand(len(xy), -1)
        out.append(unproject(db.model, params, torch.from_numpy(xy)))
    return out


def sample_matches(db: ViewDatabase, rays: list[torch.Tensor], per_pair: int = VOTE_SAMPLE) -> PairMatches:
    """Matches ``floor(k n / s)``, k < s = min(n, per_pair), of each pair's n inlier matches."""
    pair, ray_i, ray_j = [], [], []
    for e, ((i, j), m) in enumerate(zip(db.pairs.tolist(), db.matches)):
        n = len(m)
        pick = m[(np.arange(min(n, per_pair)) * n) // max(min(n, per_pair), 1)]
        pair.append(np.full(len(pick), e))
        ray_i.append(rays[i][torch.from_numpy(pick[:, 0])])
        ray_j.append(rays[j][torch.from_numpy(pick[:, 1])])
    empty = torch.zeros(0, 3, dtype=torch.float64)
    return PairMatches(torch.from_numpy(np.concatenate(pair or [np.zeros(0, np.int64)])).long(),
                       torch.cat(ray_i or [empty]), torch.cat(ray_j or [empty]),
                       torch.tensor([len(m) for m in db.matches], dtype=torch.int64))


def calibration_matrices(model: str, intrinsics: torch.Tensor) -> torch.Tensor:
    """[K, 3, 3] ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` of each camera."""
    cam = MODELS[model]
    f = intrinsics[:, list(cam.focal)].expand(-1, 2) if len(cam.focal) == 1 else intrinsics[:, list(cam.focal)]
    K = torch.zeros(len(intrinsics), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = f[:, 0], f[:, 1]
    K[:, :2, 2] = intrinsics[:, list(cam.principal)]
    K[:, 2, 2] = 1
    return K


def essential_matrices(db: ViewDatabase) -> torch.Tensor:
    """[E, 3, 3]: the stored E of calibrated pairs, else ``K_jᵀ F K_i``; NaN where neither exists."""
    K = calibration_matrices(db.model, db.intrinsics)
    Ki, Kj = K[db.image_camera[db.pairs[:, 0]]], K[db.image_camera[db.pairs[:, 1]]]
    from_f = Kj.transpose(1, 2) @ db.F @ Ki
    use_e = (db.config == CALIBRATED) & torch.isfinite(db.E).flatten(1).all(1)
    return torch.where(use_e[:, None, None], db.E, from_f)


def pose_candidates(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([E, 4, 3, 3] rotations, [E, 4, 3] unit translations) of the four decompositions."""
    U, _, Vh = torch.linalg.svd(E)
    U = U * torch.where(torch.linalg.det(U) < 0, -1.0, 1.0).to(U)[:, None, None]
    Vh = Vh * torch.where(torch.linalg.det(Vh) < 0, -1.0, 1.0).to(Vh)[:, None, None]
    W = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=E.dtype)
    R1, R2 = U @ W @ Vh, U @ W.T @ Vh
    t = U[:, :, 2]
    return torch.stack([R1, R1, R2, R2], 1), torch.stack([t, -t, t, -t], 1)


def match_depths(R: torch.Tensor, t: torch.Tensor, ray_i: torch.Tensor, ray_j: torch.Tensor):
    """Per match (d_i, d_j, cos of the triangulation angle) for ``X_j = R X_i + t``; R [M, 3, 3], t [M, 3]."""
    a = (R @ ray_i[:, :, None])[..., 0]
    c = (a * ray_j).sum(-1)
    at, bt = (a * t).sum(-1), (ray_j * t).sum(-1)
    den = (1 - c * c).clamp(min=1e-12)
    return (c * bt - at) / den, (bt - c * at) / den, c


def relative_poses(db: ViewDatabase, matches: PairMatches) -> RelativePoses:
    """Every pair's pose: the database's where stored, else the cheirality winner among E's four."""
    n = db.n_pairs
    E = essential_matrices(db)
    valid = torch.isfinite(E).flatten(1).all(1)
    Rc, tc = pose_candidates(torch.where(valid[:, None, None], E, torch.eye(3, dtype=E.dtype)))
    p = matches.pair
    votes = torch.zeros(n, 4, dtype=torch.int64)
    for k in range(4):
        d_i, d_j, _ = match_depths(Rc[p, k], tc[p, k], matches.ray_i, matches.ray_j)
        votes[:, k].index_add_(0, p, ((d_i > 0) & (d_j > 0)).long())
    best = votes.argmax(1)
    R, t = Rc[torch.arange(n), best], tc[torch.arange(n), best]
    stored = torch.isfinite(db.pose).all(1)
    if bool(stored.any()):
        q = db.pose[stored]
        R[stored] = quaternion_to_matrix(q[:, :4] / q[:, :4].norm(dim=1, keepdim=True))
        t[stored] = q[:, 4:] / q[:, 4:].norm(dim=1, keepdim=True).clamp(min=1e-300)
    d_i, d_j, c = match_depths(R[p], t[p], matches.ray_i, matches.ray_j)
    front = (d_i > 0) & (d_j > 0)
    front_count = torch.zeros(n, dtype=torch.int64).index_add_(0, p, front.long())
    sampled = torch.bincount(p, minlength=n).clamp(min=1)
    inliers = torch.where(valid | stored, (matches.total * front_count + sampled // 2) // sampled, 0)
    angle = torch.rad2deg(torch.arccos(c.clamp(-1, 1)))
    return RelativePoses(R, t, inliers, segment_median(angle[front], p[front], n), stored)


def segment_median(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """[n] median (the upper middle element) of ``values`` [M] within each segment; 0 where empty."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    counts = torch.bincount(segment, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    out = torch.zeros(n, dtype=values.dtype)
    has = counts > 0
    out[has] = values[order[starts[has] + counts[has] // 2]]
    return out
