"""Global positioning: camera centres and points from known rotations (GLOMAP, InstantSfM §GP).

Each observation o (image i, point j) gives a unit ray ``v_o = R_iᵀ unproject(xy_o)`` in world
coordinates. The residual is ``r_o = v_o - d_o (X_j - c_i)`` with one scale ``d_o >= 0`` per
observation. The scales are eliminated in closed form (variable projection): for
``u = X_j - c_i``, ``d_o* = max(0, v·u / |u|²)`` minimises |r_o|, so
``r_o(c, X) = v - d* u`` is the component of v orthogonal to u (or v itself when the point is
behind the camera). Its exact Jacobian, with ``g = ∂d*/∂u = v/|u|² - 2 (v·u) u / |u|⁴``:
``∂r/∂u = -d* I - u gᵀ`` (zero when d* is clamped at 0); ``∂u/∂X = I``, ``∂u/∂c = -I``.
The result is a BA-shaped problem (camera centres camera-side, points eliminated by Schur)
solved by the same LM engine. The gauge (translation and scale) is left to the LM damping.
"""

import math
from dataclasses import dataclass

import torch

from sparsa.data.scene import Scene
from sparsa.sfm.align import camera_centres
from sparsa.sfm.cameras import unproject
from sparsa.sfm.comm import LocalComm
from sparsa.sfm.config import GPOptions
from sparsa.sfm.lm import levenberg_marquardt
from sparsa.sfm.lsq import CameraBlocks, Linearization, robust_cost, weighted
from sparsa.sfm.summary import BASummary


@dataclass
class GPState:
    """centres [I, 3], points [P, 3]; float64."""

    centres: torch.Tensor
    points: torch.Tensor


@dataclass
class GPProblem:
    """Rays [M, 3] (world frame, unit) with their image and point indices (see :class:`sparsa.sfm.lsq.Problem`)."""

    n_images: int
    n_points: int
    rays: torch.Tensor
    obs_image: torch.Tensor
    obs_point: torch.Tensor

    def __post_init__(self):
        self.cols = 3 * self.obs_image[:, None] + torch.arange(3, device=self.obs_image.device)
        self.free_camera = torch.ones(3 * self.n_images, dtype=torch.bool, device=self.rays.device)
        self.free_point = torch.ones(self.n_points, dtype=torch.bool, device=self.rays.device)

    @property
    def n_camera_unknowns(self) -> int:
        return 3 * self.n_images

    @property
    def camera_blocks(self) -> tuple[CameraBlocks, ...]:
        return (CameraBlocks(3, self.n_images, self.obs_image, 0, 0),)

    def residuals(self, state: GPState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r [M, 3], u = X - c [M, 3], d* [M])."""
        u = state.points[self.obs_point] - state.centres[self.obs_image]
        uu = (u * u).sum(-1).clamp(min=1e-300)
        d = ((self.rays * u).sum(-1) / uu).clamp(min=0)
        return self.rays - d[:, None] * u, u, d

    def cost(self, state: GPState, loss: str, scale: float) -> float:
        return robust_cost(self.residuals(state)[0], loss, scale)

    def linearize(self, state: GPState, loss: str, scale: float) -> Linearization:
        r, u, d = self.residuals(state)
        uu = (u * u).sum(-1).clamp(min=1e-300)
        vu = (self.rays * u).sum(-1)
        g = self.rays / uu[:, None] - 2 * (vu / (uu * uu))[:, None] * u  # ∂d*/∂u
        g = g * (d > 0)[:, None]
        eye = torch.eye(3, dtype=u.dtype, device=u.device)
        J_u = -d[:, None, None] * eye - u[:, :, None] * g[:, None, :]  # [M, 3, 3]
        return weighted(r, -J_u, J_u, loss, scale)

    def retract(self, state: GPState, dc: torch.Tensor, dp: torch.Tensor) -> GPState:
        return GPState(state.centres + dc.view(-1, 3), state.points + dp)

    def state_norm(self, state: GPState, comm: LocalComm) -> float:
        return math.sqrt(float((state.centres ** 2).sum()) + comm.sum(float((state.points ** 2).sum())))


def world_rays(scene: Scene) -> torch.Tensor:
    """[M, 3] unit rays of every observation in world coordinates (rotations of the scene)."""
    R = scene.rotation_matrices()[scene.obs_image]
    rays = unproject(scene.model, scene.intrinsics[scene.image_camera[scene.obs_image]], scene.obs_xy)
    return (R.transpose(1, 2) @ rays[:, :, None])[..., 0]


def solve_gp(scene: Scene, options: GPOptions = GPOptions(), *, device: str = "cpu",
             progress: bool = False) -> tuple[Scene, BASummary]:
    """Camera centres and points of ``scene`` from its rotations, intrinsics and observations alone,
    from a random start (the scene's translations and points are ignored).

    Returns:
        (the scene with translations ``t = -R c`` and points from the solve, the summary; rmse is the
        root mean square of |r_o|, the sine of each ray's angle to its point).
    """
    g = torch.Generator().manual_seed(options.seed)
    f64 = {"device": device, "dtype": torch.float64}
    problem = GPProblem(scene.n_images, scene.n_points, world_rays(scene).to(**f64), scene.obs_image.to(device),
                        scene.obs_point.to(device))
    start = [(2 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1) * options.init_range
             for n in (scene.n_images, scene.n_points)]
    state = GPState(*(x.to(**f64) for x in start))
    state, summary = levenberg_marquardt(problem, state, options, device=device, progress=progress,
                                         desc="global positioning")
    R = scene.rotation_matrices()
    t = -(R @ state.centres.cpu()[:, :, None])[..., 0]
    return scene.replace(translations=t, points=state.points.cpu()), summary


def angular_errors(scene: Scene) -> torch.Tensor:
    """[M] angle in degrees between each observation's ray and the direction from its camera centre to
    its point (180 for a point behind the camera); what GP's residual measures, as an angle."""
    u = scene.points[scene.obs_point] - camera_centres(scene)[scene.obs_image]
    cos = (world_rays(scene) * u).sum(-1) / u.norm(dim=-1).clamp(min=1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
