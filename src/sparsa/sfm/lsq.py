"""What the LM solver needs from a least-squares problem with eliminable 3-vectors ("points").

Unknowns split into a camera side (a flat vector, numbered by the problem) and points [P, 3].
Each residual block o (r_o of R rows) touches the camera-side columns ``cols[o]`` and one point
``obs_point[o]``; bundle adjustment (:mod:`sparsa.sfm.ba`) and global positioning
(:mod:`sparsa.sfm.gp`) both have this shape, so one Schur/LM engine serves both.
"""

from dataclasses import dataclass
from typing import Protocol

import torch

from sparsa.sfm.comm import LocalComm
from sparsa.sfm.losses import robust


@dataclass
class Linearization:
    """Robustly weighted residuals and Jacobians at one state.

    Attributes:
        r: [M, R] √rho'-weighted residuals.
        Jc: [M, R, C] d r / d camera-side unknowns ``cols`` (zero where fixed).
        Jx: [M, R, 3] d r / d point (zero where fixed).
        cost: 1/2 Σ rho(|r|²) of the unweighted residuals.
        sq_error: Σ |r|² of the unweighted residuals.
    """

    r: torch.Tensor
    Jc: torch.Tensor
    Jx: torch.Tensor
    cost: float
    sq_error: float


@dataclass(frozen=True)
class CameraBlocks:
    """One kind of camera-side block (e.g. poses): ``count`` blocks of ``size`` unknowns stored
    consecutively from ``offset`` in the camera vector; observation o uses block ``index[o]``,
    whose columns sit at ``Jc[:, :, column:column + size]``."""

    size: int
    count: int
    index: torch.Tensor
    column: int
    offset: int


class Problem(Protocol):
    n_points: int
    n_camera_unknowns: int
    cols: torch.Tensor  # [M, C] int64
    obs_point: torch.Tensor  # [M] int64
    free_camera: torch.Tensor  # [n_camera_unknowns] bool
    free_point: torch.Tensor  # [n_points] bool
    camera_blocks: tuple[CameraBlocks, ...]

    def linearize(self, state, loss: str, scale: float) -> Linearization: ...

    def cost(self, state, loss: str, scale: float) -> float: ...

    def retract(self, state, dc: torch.Tensor, dp: torch.Tensor): ...

    def state_norm(self, state, comm: LocalComm) -> float: ...


def weighted(r: torch.Tensor, Jc: torch.Tensor, Jx: torch.Tensor, loss: str, scale: float) -> Linearization:
    """Scale residuals and Jacobians by √rho'(|r|²) (Ceres' correction when rho'' <= 0)."""
    s = (r * r).sum(-1)
    rho, rho1 = robust(s, loss, scale)
    w = torch.sqrt(rho1)[:, None]
    return Linearization(r * w, Jc * w[..., None], Jx * w[..., None], 0.5 * float(rho.sum()), float(s.sum()))


def robust_cost(r: torch.Tensor, loss: str, scale: float) -> float:
    """1/2 Σ rho(|r_o|²) for residuals r [M, R]."""
    return 0.5 * float(robust((r * r).sum(-1), loss, scale)[0].sum())
