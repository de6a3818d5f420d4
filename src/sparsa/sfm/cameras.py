"""Camera models: projection of camera-frame points to pixels, with analytic Jacobians.

Every model maps ``X_cam`` [M, 3] to a pixel [M, 2] in three steps:
``p = sign * X_cam[:2] / X_cam[2]`` (normalized; ``sign`` is -1 for BAL), ``d = distort(p, k)``,
``pixel = focal * d + c``. The Jacobians are written out per step and chained; tests check them
against autograd.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CameraModel:
    """Where each part of a model's parameter vector lives.

    Args:
        focal: indices of f (one, shared by x and y) or (fx, fy).
        principal: indices of (cx, cy), or () when pixels are centred (BAL).
        extra: indices of the distortion coefficients.
        distortion: ``none``, ``radial`` (k1[, k2]) or ``opencv`` (k1, k2, p1, p2).
        sign: +1, or -1 for BAL's ``p = -X/Z``.
    """

    focal: tuple[int, ...]
    principal: tuple[int, ...]
    extra: tuple[int, ...]
    distortion: str
    sign: float = 1.0

    @property
    def n_params(self) -> int:
        return len(self.focal) + len(self.principal) + len(self.extra)


MODELS = {
    "SIMPLE_PINHOLE": CameraModel((0,), (1, 2), (), "none"),
    "PINHOLE": CameraModel((0, 1), (2, 3), (), "none"),
    "SIMPLE_RADIAL": CameraModel((0,), (1, 2), (3,), "radial"),
    "RADIAL": CameraModel((0,), (1, 2), (3, 4), "radial"),
    "OPENCV": CameraModel((0, 1), (2, 3), (4, 5, 6, 7), "opencv"),
    "BAL": CameraModel((0,), (), (1, 2), "radial", sign=-1.0),
}


def distort(p: torch.Tensor, k: torch.Tensor, kind: str):
    """Distortion of normalized points.

    Args:
        p: [M, 2] normalized coordinates.
        k: [M, n_extra] coefficients.
    Returns:
        (d [M, 2], dd/dp [M, 2, 2], dd/dk [M, 2, n_extra]).
    """
    M = p.shape[0]
    eye = torch.eye(2, dtype=p.dtype, device=p.device).expand(M, 2, 2)
    if kind == "none":
        return p, eye, p.new_zeros(M, 2, 0)
    u, v = p[:, 0], p[:, 1]
    r2 = u * u + v * v
    if kind == "radial":
        powers = torch.stack([r2 ** (i + 1) for i in range(k.shape[1])], -1)  # [M, n]: r2, r2^2
        s = 1 + (k * powers).sum(-1)
        ds = sum((i + 1) * k[:, i] * r2**i for i in range(k.shape[1]))  # d s / d r2
        d = p * s[:, None]
        J = s[:, None, None] * eye + 2 * ds[:, None, None] * p[:, :, None] * p[:, None, :]
        return d, J, p[:, :, None] * powers[:, None, :]
    k1, k2, p1, p2 = k.unbind(-1)  # opencv: radial k1, k2 and tangential p1, p2
    radial = k1 * r2 + k2 * r2 * r2
    dradial = k1 + 2 * k2 * r2  # d radial / d r2
    uv = u * v
    d = torch.stack([u + u * radial + 2 * p1 * uv + p2 * (r2 + 2 * u * u),
                     v + v * radial + 2 * p2 * uv + p1 * (r2 + 2 * v * v)], -1)
    J = torch.stack([1 + radial + 2 * u * u * dradial + 2 * p1 * v + 6 * p2 * u,
                     2 * u * v * dradial + 2 * p1 * u + 2 * p2 * v,
                     2 * u * v * dradial + 2 * p2 * v + 2 * p1 * u,
                     1 + radial + 2 * v * v * dradial + 2 * p2 * u + 6 * p1 * v], -1).view(M, 2, 2)
    Jk = torch.stack([u * r2, u * r2 * r2, 2 * uv, r2 + 2 * u * u,
                      v * r2, v * r2 * r2, r2 + 2 * v * v, 2 * uv], -1).view(M, 2, 4)
    return d, J, Jk


def project(model: str, params: torch.Tensor, X_cam: torch.Tensor, *, jacobians: bool = False):
    """Pixels of camera-frame points.

    Args:
        model: a key of :data:`MODELS`.
        params: [M, n_params] each observation's camera parameters (COLMAP order).
        X_cam: [M, 3] points in the camera frame (Z > 0 in front, Z < 0 for BAL).
        jacobians: also return d pixel / d X_cam [M, 2, 3] and d pixel / d params [M, 2, n_params].
    Returns:
        pixels [M, 2], or (pixels, J_X, J_params).
    """
    cam = MODELS[model]
    x, y, z = X_cam.unbind(-1)
    inv_z = 1 / z
    p = cam.sign * X_cam[:, :2] * inv_z[:, None]
    d, Jd_p, Jd_k = distort(p, params[:, list(cam.extra)], cam.distortion)
    focal = params[:, list(cam.focal)].expand(-1, 2) if len(cam.focal) == 1 else params[:, list(cam.focal)]
    pixel = focal * d
    if cam.principal:
        pixel = pixel + params[:, list(cam.principal)]
    if not jacobians:
        return pixel
    M = X_cam.shape[0]
    zero = torch.zeros_like(x)
    Jp_X = cam.sign * torch.stack([inv_z, zero, -x * inv_z * inv_z,
                                   zero, inv_z, -y * inv_z * inv_z], -1).view(M, 2, 3)
    J_X = focal[:, :, None] * (Jd_p @ Jp_X)
    J_params = X_cam.new_zeros(M, 2, cam.n_params)
    if len(cam.focal) == 1:
        J_params[:, :, cam.focal[0]] = d
    else:
        J_params[:, 0, cam.focal[0]] = d[:, 0]
        J_params[:, 1, cam.focal[1]] = d[:, 1]
    if cam.principal:
        J_params[:, 0, cam.principal[0]] = 1
        J_params[:, 1, cam.principal[1]] = 1
    if cam.extra:
        J_params[:, :, list(cam.extra)] = focal[:, :, None] * Jd_k
    return pixel, J_X, J_params


def unproject(model: str, params: torch.Tensor, pixels: torch.Tensor, *, iterations: int = 20) -> torch.Tensor:
    """Unit viewing rays in the camera frame of pixels (the inverse of :func:`project` up to depth).

    The distortion is inverted by Newton's method on ``distort(p) = d`` from ``p = d``
    (``iterations`` steps with the analytic 2x2 Jacobian).

    Args:
        params: [M, n_params]; pixels: [M, 2].
    Returns:
        [M, 3] unit vectors (Z > 0; Z < 0 for BAL, whose cameras look down -Z).
    """
    cam = MODELS[model]
    focal = params[:, list(cam.focal)].expand(-1, 2) if len(cam.focal) == 1 else params[:, list(cam.focal)]
    d = pixels - params[:, list(cam.principal)] if cam.principal else pixels
    d = d / focal
    k = params[:, list(cam.extra)]
    p = d.clone()
    for _ in range(iterations if cam.distortion != "none" else 0):
        value, J, _ = distort(p, k, cam.distortion)
        r = value - d  # Newton step J⁻¹ r with the 2x2 inverse written out (linalg.solve is 10x slower here)
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        p = p - torch.stack([J[:, 1, 1] * r[:, 0] - J[:, 0, 1] * r[:, 1],
                             J[:, 0, 0] * r[:, 1] - J[:, 1, 0] * r[:, 0]], dim=1) / det[:, None]
    ray = torch.cat([p, torch.full_like(p[:, :1], cam.sign)], dim=1)  # BAL: p = -X/Z with Z < 0
    return ray / ray.norm(dim=1, keepdim=True)
