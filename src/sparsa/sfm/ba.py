"""Bundle adjustment: reprojection error over poses, intrinsics and points.

Variables: per image a pose (R [3, 3], t [3]) updated on SO(3) as ``R <- exp(hat(dw)) R``,
``t <- t + dt``; per camera its intrinsics; per point its position. Camera-side unknowns are
numbered ``[6 * image + j]`` for pose entries (dw, dt) then ``[6 * I + n * camera + j]`` for
intrinsics. For observation o of point p in image i with camera k: ``X_cam = R_i X_p + t_i``,
``r_o = project(K_k, X_cam) - xy_o``, and ``dX_cam/d dw = -hat(R X)``, ``dX_cam/d dt = I``,
``dX_cam/d X = R``.
"""

import math
import time
from dataclasses import dataclass

import torch

from sparsa.data.rotations import angle_axis_to_matrix, hat, matrix_to_angle_axis, matrix_to_quaternion
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from sparsa.sfm.cameras import MODELS, project
from sparsa.sfm.comm import LocalComm
from sparsa.sfm.config import BAOptions
from sparsa.sfm.lm import levenberg_marquardt
from sparsa.sfm.lsq import CameraBlocks, Linearization, robust_cost, weighted
from sparsa.sfm.summary import BASummary

POSE = 6  # camera-side unknowns per image: rotation (3) then translation (3)


@dataclass
class BAState:
    """R [I, 3, 3], t [I, 3], intrinsics [K, n], points [P, 3]; float64."""

    R: torch.Tensor
    t: torch.Tensor
    intrinsics: torch.Tensor
    points: torch.Tensor


@dataclass
class BAProblem:
    """Observations and which variables are free (see :class:`sparsa.sfm.lsq.Problem`).

    Attributes:
        obs_image, obs_camera, obs_point: [M] int64; obs_xy: [M, 2] pixels.
        cols: [M, 6 + n] camera-side unknowns of each observation.
        free_camera: [6 I + n K] bool; free_point: [P] bool.
    """

    model: str
    n_images: int
    n_cameras: int
    n_points: int
    obs_image: torch.Tensor
    obs_camera: torch.Tensor
    obs_point: torch.Tensor
    obs_xy: torch.Tensor
    cols: torch.Tensor
    free_camera: torch.Tensor
    free_point: torch.Tensor

    @property
    def n_params(self) -> int:
        return MODELS[self.model].n_params

    @property
    def n_camera_unknowns(self) -> int:
        return POSE * self.n_images + self.n_params * self.n_cameras

    @property
    def camera_blocks(self) -> tuple[CameraBlocks, ...]:
        return (CameraBlocks(POSE, self.n_images, self.obs_image, 0, 0),
                CameraBlocks(self.n_params, self.n_cameras, self.obs_camera, POSE, POSE * self.n_images))

    def reprojection(self, state: BAState) -> torch.Tensor:
        """Residuals [M, 2] in pixels."""
        R = state.R[self.obs_image]
        X_cam = (R @ state.points[self.obs_point][:, :, None])[..., 0] + state.t[self.obs_image]
        return project(self.model, state.intrinsics[self.obs_camera], X_cam) - self.obs_xy

    def cost(self, state: BAState, loss: str, scale: float) -> float:
        return robust_cost(self.reprojection(state), loss, scale)

    def linearize(self, state: BAState, loss: str, scale: float) -> Linearization:
        R = state.R[self.obs_image]
        RX = (R @ state.points[self.obs_point][:, :, None])[..., 0]
        pixels, J_X, J_k = project(self.model, state.intrinsics[self.obs_camera], RX + state.t[self.obs_image],
                                   jacobians=True)
        Jc = torch.cat([J_X @ -hat(RX), J_X, J_k], dim=2) * self.free_camera[self.cols][:, None, :]
        Jx = (J_X @ R) * self.free_point[self.obs_point][:, None, None]
        return weighted(pixels - self.obs_xy, Jc, Jx, loss, scale)

    def retract(self, state: BAState, dc: torch.Tensor, dp: torch.Tensor) -> BAState:
        pose = dc[: POSE * self.n_images].view(self.n_images, POSE)
        return BAState(angle_axis_to_matrix(pose[:, :3]) @ state.R, state.t + pose[:, 3:],
                       state.intrinsics + dc[POSE * self.n_images:].view(self.n_cameras, self.n_params),
                       state.points + dp)

    def state_norm(self, state: BAState, comm: LocalComm) -> float:
        """|x| over every variable (rotations as angle-axis; points of every process)."""
        cameras = sum(float((p * p).sum()) for p in (matrix_to_angle_axis(state.R), state.t, state.intrinsics))
        return math.sqrt(cameras + comm.sum(float((state.points * state.points).sum())))


def scene_residuals(scene: Scene) -> torch.Tensor:
    """[M, 2] reprojection residuals of a scene in pixels (differentiable in its tensors)."""
    R = scene.rotation_matrices()[scene.obs_image]
    X_cam = (R @ scene.points[scene.obs_point][:, :, None])[..., 0] + scene.translations[scene.obs_image]
    return project(scene.model, scene.intrinsics[scene.image_camera[scene.obs_image]], X_cam) - scene.obs_xy


def free_intrinsics(model: str, options: BAOptions) -> torch.Tensor:
    """[n] bool: which intrinsic parameters the options refine."""
    cam = MODELS[model]
    free = torch.zeros(cam.n_params, dtype=torch.bool)
    for indices, flag in ((cam.focal, options.refine_focal_length), (cam.principal, options.refine_principal_point),
                          (cam.extra, options.refine_extra_params)):
        free[list(indices)] = flag
    return free


def build_problem(scene: Scene, options: BAOptions, device=None,
                  comm: LocalComm = LocalComm()) -> tuple[BAProblem, BAState]:
    """Problem and start state from a validated scene (float64, on ``device``); with ``comm``,
    this process's share of the points."""
    I, K, P, n = scene.n_images, scene.n_cameras, scene.n_points, MODELS[scene.model].n_params
    for i in options.fixed_images:
        if not 0 <= i < I:
            raise SparsaError(f"--fix-images {i}: outside [0, {I})")
    seen = comm.sum_(torch.bincount(scene.obs_image, minlength=I).double())
    if int(seen.sum()) == 0:
        raise SparsaError(f"no observations to adjust: no point is seen by two or more of the {I} image(s) "
                          "(observations behind their camera and tracks shorter than two views are dropped); "
                          "give points observed by at least two images")
    if bool((seen == 0).any()):
        raise SparsaError(f"image {int((seen == 0).nonzero()[0])} has no observations; remove it first")
    obs_camera = scene.image_camera[scene.obs_image]
    cols = torch.cat([POSE * scene.obs_image[:, None] + torch.arange(POSE),
                      POSE * I + n * obs_camera[:, None] + torch.arange(n)], dim=1)
    free_camera = torch.ones(POSE * I + n * K, dtype=torch.bool)
    free_camera[POSE * I:].view(K, n)[:] = free_intrinsics(scene.model, options)
    for i in options.fixed_images:
        free_camera[POSE * i: POSE * (i + 1)] = False
    f64 = {"device": device, "dtype": torch.float64}
    problem = BAProblem(scene.model, I, K, P, scene.obs_image.to(device), obs_camera.to(device),
                        scene.obs_point.to(device), scene.obs_xy.to(**f64), cols.to(device), free_camera.to(device),
                        torch.full((P,), options.refine_points, dtype=torch.bool, device=device))
    state = BAState(*(x.to(**f64).clone() for x in (scene.rotation_matrices(), scene.translations,
                                                    scene.intrinsics, scene.points)))
    return problem, state


def scene_from_state(scene: Scene, state: BAState) -> Scene:
    """``scene`` with its variables replaced by ``state`` (on CPU). Rotations go back to the scene's
    format; those the solve left exactly unchanged (fixed images) keep their original bits."""
    R = state.R.cpu()
    rotations = matrix_to_angle_axis(R) if scene.rotation_format == "angle_axis" else matrix_to_quaternion(R)
    same = (R == scene.rotation_matrices()).flatten(1).all(1)
    rotations[same] = scene.rotations[same]
    return scene.replace(rotations=rotations, translations=state.t.cpu(), intrinsics=state.intrinsics.cpu(),
                         points=state.points.cpu())


def solve_ba(scene: Scene, options: BAOptions = BAOptions(), *, device: str = "cpu", progress: bool = False,
             comm: LocalComm = LocalComm()) -> tuple[Scene, BASummary]:
    """Bundle-adjust ``scene`` (validated) on ``device`` in float64.

    With ``comm`` a :class:`~sparsa.sfm.comm.TorchComm`, ``scene`` holds this process's share of
    the points (and all their observations) and every image; the returned scene holds the same share.

    Returns:
        (the scene with optimised poses, intrinsics and points, the summary).
    """
    start = time.perf_counter()
    problem, state = build_problem(scene, options, device, comm)
    setup_seconds = time.perf_counter() - start
    state, summary = levenberg_marquardt(problem, state, options, device=device, progress=progress, comm=comm,
                                         desc="bundle adjustment")
    summary.setup_seconds = setup_seconds
    return scene_from_state(scene, state), summary
