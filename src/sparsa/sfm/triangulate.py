"""Multi-view linear triangulation of whole tracks, all at once.

A track's point X minimises the squared distances to its observations' rays, ``Σ_o |P_o (X - c_o)|²``
with ``P_o = I - v_o v_oᵀ`` (v_o the unit world ray of observation o, c_o its camera centre):
``(Σ P_o) X = Σ P_o c_o``, one 3x3 system per track built with ``index_add``.
"""

import torch


def triangulate(centres: torch.Tensor, rays: torch.Tensor, obs_image: torch.Tensor, obs_track: torch.Tensor,
                n_tracks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [T, 3], well-posed [T] bool) from camera centres [I, 3] and unit world rays [M, 3].

    A track is ill-posed when its system's smallest eigenvalue is below 1e-12 relative to the
    largest (parallel rays)."""
    eye = torch.eye(3, dtype=rays.dtype, device=rays.device)
    P = eye - rays[:, :, None] * rays[:, None, :]  # [M, 3, 3]
    A = torch.zeros(n_tracks, 3, 3, dtype=rays.dtype, device=rays.device).index_add_(0, obs_track, P)
    b = torch.zeros(n_tracks, 3, dtype=rays.dtype, device=rays.device).index_add_(
        0, obs_track, (P @ centres[obs_image][:, :, None])[..., 0])
    values = torch.linalg.eigvalsh(A)
    ok = values[:, 0] > 1e-12 * values[:, 2].clamp(min=1e-300)
    A = torch.where(ok[:, None, None], A, eye)
    return torch.linalg.solve(A, b), ok


def max_ray_angle_deg(points: torch.Tensor, centres: torch.Tensor, obs_image: torch.Tensor, obs_track: torch.Tensor,
                      n_tracks: int) -> torch.Tensor:
    """[T] twice the largest angle between a track's viewing direction and the mean of its viewing
    directions (degrees): a lower bound of the largest pairwise triangulation angle's half, doubled
    (exact for two views)."""
    d = points[obs_track] - centres[obs_image]
    d = d / d.norm(dim=1, keepdim=True).clamp(min=1e-300)
    mean = torch.zeros(n_tracks, 3, dtype=d.dtype, device=d.device).index_add_(0, obs_track, d)
    mean = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-300)
    cos = (d * mean[obs_track]).sum(-1).clamp(-1, 1)
    worst = torch.full((n_tracks,), 1.0, dtype=d.dtype, device=d.device).scatter_reduce_(0, obs_track, cos, "amin")
    return 2 * torch.rad2deg(torch.arccos(worst))
