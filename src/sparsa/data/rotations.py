"""Rotation parameterizations used by scenes: angle-axis (Rodrigues, BAL), unit quaternions
(w, x, y, z; COLMAP) and 3x3 matrices. All functions are batched over leading dims and exact
at zero angle (Taylor branches, no 0/0), so they are safe inside autograd too.
"""

import torch

SMALL_ANGLE = 1e-8  # below this |w| (radians) the series branches are exact to float64


def hat(w: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> [..., 3, 3] skew matrix with ``hat(w) @ x == cross(w, x)``."""
    z = torch.zeros_like(w[..., 0])
    x, y, t = w.unbind(-1)
    return torch.stack([z, -t, y, t, z, -x, -y, x, z], dim=-1).view(*w.shape[:-1], 3, 3)


def angle_axis_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: [..., 3] angle-axis (radians) -> [..., 3, 3] rotation ``exp(hat(w))``."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < SMALL_ANGLE**2
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / torch.where(small, 1.0, theta2))
    K = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation -> [..., 4] unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method:
    the largest of the four squared components is taken first, stable for every angle)."""
    m = R
    diag = torch.stack([m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2], m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    t = torch.stack([1 + diag[..., 0], 1 + 2 * diag[..., 1] - diag[..., 0], 1 + 2 * diag[..., 2] - diag[..., 0],
                     1 + 2 * diag[..., 3] - diag[..., 0]], -1)  # 4 * squared components
    i = t.argmax(-1, keepdim=True)
    s = torch.sqrt(t.gather(-1, i).clamp(min=0)).squeeze(-1)  # 2 * |component i|
    qs = [
        torch.stack([s / 2, (m[..., 2, 1] - m[..., 1, 2]) / (2 * s), (m[..., 0, 2] - m[..., 2, 0]) / (2 * s),
                     (m[..., 1, 0] - m[..., 0, 1]) / (2 * s)], -1),
        torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / (2 * s), s / 2, (m[..., 0, 1] + m[..., 1, 0]) / (2 * s),
                     (m[..., 0, 2] + m[..., 2, 0]) / (2 * s)], -1),
        torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / (2 * s), (m[..., 0, 1] + m[..., 1, 0]) / (2 * s), s / 2,
                     (m[..., 1, 2] + m[..., 2, 1]) / (2 * s)], -1),
        torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / (2 * s), (m[..., 0, 2] + m[..., 2, 0]) / (2 * s),
                     (m[..., 1, 2] + m[..., 2, 1]) / (2 * s), s / 2], -1),
    ]
    q = torch.stack(qs, -2).gather(-2, i[..., None].expand(*i.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[..., 4] quaternion (w, x, y, z), normalized here -> [..., 3, 3] rotation."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).view(*q.shape[:-1], 3, 3)


def quaternion_to_angle_axis(q: torch.Tensor) -> torch.Tensor:
    """[..., 4] quaternion (w, x, y, z) -> [..., 3] angle-axis with angle in [0, pi]."""
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    sin_half = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    small = sin_half < SMALL_ANGLE
    scale = torch.where(small, 2 / q[..., :1], angle / torch.where(small, torch.ones_like(sin_half), sin_half))
    return v * scale


def angle_axis_to_quaternion(w: torch.Tensor) -> torch.Tensor:
    """[..., 3] angle-axis -> [..., 4] unit quaternion (w, x, y, z), w >= 0 for angles <= pi."""
    theta = w.norm(dim=-1, keepdim=True)
    small = theta < SMALL_ANGLE
    half = torch.where(small, 0.5 - theta**2 / 48, torch.sin(theta / 2) / torch.where(small, 1.0, theta))
    return torch.cat([torch.cos(theta / 2), w * half], -1)


def matrix_to_angle_axis(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation -> [..., 3] angle-axis (through the quaternion, stable near pi)."""
    return quaternion_to_angle_axis(matrix_to_quaternion(R))
