"""The two bundle-adjustment peers ours is compared against: COLMAP's Ceres BA (pycolmap) and scipy.

Both minimise our BA cost ``1/2 sum_o rho(|r_o|^2)`` with ``r_o = project(model, intrinsics[image_camera
[obs_image]], R_i X_p + t_i) - obs_xy`` over every pose, every point and each camera's focal length(s)
and distortion (the principal point stays fixed, as in COLMAP's BA). Each returns a :class:`PeerRun`
with the peer's own costs, our recomputation of them (:func:`ba_cost`) and the optimised scene.

pycolmap's ``bundle_adjustment`` discards the Ceres summary, so :func:`run_pycolmap` does what it
does (every registered image in the config, gauge ``TWO_CAMS_FROM_WORLD``, the default Ceres bundle
adjuster) and keeps the summary; the tests check that the solution is bit-identical.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

from sparsa.data.rotations import angle_axis_to_quaternion, quaternion_to_angle_axis
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from sparsa.sfm import ba
from sparsa.sfm.cameras import MODELS
from sparsa.sfm.ba import scene_residuals
from sparsa.sfm.config import BAOptions
from sparsa.sfm.losses import robust

PYCOLMAP_VERSION = "4.2.1"
COLMAP_LOSSES = ("trivial", "huber", "soft_l1", "cauchy")  # Ceres' losses as COLMAP names them
SCIPY_LOSSES = ("linear", "huber", "soft_l1", "cauchy")


@dataclass
class PeerRun:
    """One peer's bundle adjustment of a scene.

    Args:
        name: ``pycolmap`` or ``scipy``.
        initial_cost, final_cost: the peer's own ``1/2 sum rho(|r|^2)`` before and after.
        recomputed_initial_cost, recomputed_final_cost: the same by :func:`ba_cost` on the input and
            the optimised scene (our ``project``).
        iterations: trust-region steps tried, accepted or rejected (Ceres' iteration 0 and scipy's
            first evaluation not counted).
        seconds: wall time of the solver call alone.
        rmse_px: ``sqrt(mean |r_o|^2)`` at the end, over all observations.
        termination: the solver's termination type and message.
        scene: the optimised scene, in the input's layout and rotation format.
        log: ``(seconds, cost)`` after each iteration, seconds on the run's own timer (which
            starts before the problem is built); its first entry is the start's evaluation. Empty
            where the peer keeps none (pycolmap: see :func:`pycolmap_trace`).
        tolerances: the stopping rules the run used, in the peer's own names.
    """

    name: str
    initial_cost: float
    final_cost: float
    recomputed_initial_cost: float
    recomputed_final_cost: float
    iterations: int
    seconds: float
    rmse_px: float
    termination: str
    scene: Scene
    log: list[tuple[float, float]] = field(default_factory=list)
    tolerances: dict = field(default_factory=dict)


def rho(s: torch.Tensor, loss: str, scale: float) -> torch.Tensor:
    """[M] Ceres' robust loss of squared norms ``s`` [M] (:func:`sparsa.sfm.losses.robust`; scipy's
    ``linear`` is Ceres' ``trivial``)."""
    return robust(s, "trivial" if loss == "linear" else loss, scale)[0]


def rho_over_s(s: torch.Tensor, loss: str, scale: float) -> torch.Tensor:
    """[M] ``rho(s) / s`` for squared norms ``s`` [M], its limit 1 at ``s = 0``."""
    positive = s > 0
    return torch.where(positive, rho(s, loss, scale) / torch.where(positive, s, 1.0), 1.0)


def ba_cost(scene: Scene, loss: str = "trivial", scale: float = 1.0) -> tuple[float, float]:
    """Our BA cost ``1/2 sum_o rho(|r_o|^2)`` and the RMSE ``sqrt(mean_o |r_o|^2)`` (pixels)."""
    s = scene_residuals(scene).square().sum(-1)
    return 0.5 * float(rho(s, loss, scale).sum()), float(s.mean().sqrt())


def import_pycolmap():
    """The pycolmap module, or :class:`SparsaError` saying how to install it."""
    try:
        import pycolmap
    except ImportError:
        raise SparsaError(f"the pycolmap peer needs pycolmap: pip install pycolmap=={PYCOLMAP_VERSION}") from None
    return pycolmap


def points2d_index(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Observations grouped by image, the order COLMAP stores its 2D points in.

    Returns:
        (order [M]: observation indices sorted by image (stable), starts [I + 1]: where each image's
        run begins in ``order``).
    """
    image = scene.obs_image.numpy()
    order = np.argsort(image, kind="stable")
    return order, np.searchsorted(image[order], np.arange(scene.n_images + 1))


def to_reconstruction(scene: Scene, pycolmap):
    """A ``pycolmap.Reconstruction`` of ``scene``: camera ``k + 1`` with a trivial rig (rig id = camera
    id), image ``i + 1`` in a trivial registered frame with ``cam_from_world = (R_i, t_i)``, one 2D
    point per observation, one 3D point per scene point with its track.

    Returns:
        (reconstruction, point3D_ids [P] int64: the COLMAP id of each scene point).
    """
    sizes = scene.camera_sizes
    if sizes is None:
        sizes = (2 * scene.intrinsics[:, list(MODELS[scene.model].principal)]).round().long()
    rec = pycolmap.Reconstruction()
    for k in range(scene.n_cameras):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(
            model=scene.model, width=int(sizes[k, 0]), height=int(sizes[k, 1]),
            params=scene.intrinsics[k].numpy(), camera_id=k + 1))
    quats = scene.rotations if scene.rotation_format == "quaternion" else angle_axis_to_quaternion(scene.rotations)
    xyzw = quats[:, [1, 2, 3, 0]].numpy()
    order, starts = points2d_index(scene)
    xy = scene.obs_xy.numpy()[order]
    for i in range(scene.n_images):
        image = pycolmap.Image(name=str(i), keypoints=xy[starts[i]:starts[i + 1]],
                               camera_id=int(scene.image_camera[i]) + 1, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw[i]), scene.translations[i].numpy())
        rec.add_image_with_trivial_frame(image, pose)
    point2d = np.empty(scene.n_observations, dtype=np.int64)
    point2d[order] = np.arange(scene.n_observations) - starts[scene.obs_image.numpy()[order]]
    by_point = np.argsort(scene.obs_point.numpy(), kind="stable")
    point_starts = np.searchsorted(scene.obs_point.numpy()[by_point], np.arange(scene.n_points + 1))
    image_ids, xyz = scene.obs_image.numpy() + 1, scene.points.numpy()
    point_ids = np.empty(scene.n_points, dtype=np.int64)
    for p in range(scene.n_points):
        obs = by_point[point_starts[p]:point_starts[p + 1]]
        track = pycolmap.Track([pycolmap.TrackElement(int(image_ids[o]), int(point2d[o])) for o in obs])
        point_ids[p] = rec.add_point3D(xyz[p], track)
    return rec, point_ids


def from_reconstruction(rec, scene: Scene, point_ids: np.ndarray) -> Scene:
    """``scene`` with the poses, intrinsics and points of ``rec`` (built by :func:`to_reconstruction`),
    rotations in ``scene``'s format."""
    poses = [rec.image(i + 1).cam_from_world() for i in range(scene.n_images)]
    quats = torch.from_numpy(np.array([pose.rotation.quat for pose in poses]))[:, [3, 0, 1, 2]]
    return scene.replace(
        rotations=quats if scene.rotation_format == "quaternion" else quaternion_to_angle_axis(quats),
        translations=torch.from_numpy(np.array([pose.translation for pose in poses])),
        intrinsics=torch.from_numpy(np.array([rec.camera(k + 1).params for k in range(scene.n_cameras)])),
        points=torch.from_numpy(np.array([rec.point3D(int(p)).xyz for p in point_ids])))


def colmap_options(pycolmap, *, max_iterations: int, function_tolerance: float, gradient_tolerance: float,
                   parameter_tolerance: float, threads: int, loss: str, loss_scale: float):
    """``BundleAdjustmentOptions`` refining poses, points, focal lengths and distortion (principal
    point fixed) with these Ceres settings and no printed summary."""
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = options.refine_extra_params = True
    options.refine_principal_point = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.__members__[loss.upper()]
    options.ceres.loss_function_scale = loss_scale
    solver = options.ceres.solver_options
    solver.max_num_iterations = max_iterations
    solver.function_tolerance = function_tolerance
    solver.gradient_tolerance = gradient_tolerance
    solver.parameter_tolerance = parameter_tolerance
    solver.num_threads = threads
    return options


def check_peer_input(scene: Scene, loss: str, losses: tuple[str, ...], peer: str) -> None:
    """:class:`SparsaError` unless ``scene`` has observations and ``loss`` is one of ``losses``."""
    if scene.n_observations == 0:
        raise SparsaError(f"{peer} bundle adjustment: the scene has no observations")
    if loss not in losses:
        raise SparsaError(f"{peer} bundle adjustment: loss {loss!r} unknown; choose one of {', '.join(losses)}")


def run_pycolmap(scene: Scene, *, max_iterations: int = 100, function_tolerance: float = 0.0,
                 gradient_tolerance: float = 1e-4, parameter_tolerance: float = 0.0, threads: int = -1,
                 loss: str = "trivial", loss_scale: float = 1.0) -> PeerRun:
    """COLMAP's global bundle adjustment (Ceres) of ``scene``, as ``pycolmap.bundle_adjustment`` runs it.

    The tolerance defaults are COLMAP's. Ceres runs single-threaded below 50,000 residuals whatever
    ``threads`` says (COLMAP's ``min_num_residuals_for_cpu_multi_threading``); the gauge is COLMAP's
    ``TWO_CAMS_FROM_WORLD`` (the first image's pose and one translation coordinate of a second fixed).

    Args:
        scene: the start (any device; the run and its scene are on the CPU); any camera model but BAL.
        max_iterations, function_tolerance, gradient_tolerance, parameter_tolerance: Ceres' stopping rules.
        threads: Ceres threads, -1 for all cores.
        loss: ``trivial``, ``huber``, ``soft_l1`` or ``cauchy`` with scale ``loss_scale`` (pixels).
    Returns:
        The run; ``seconds`` times building the Ceres problem and solving it.
    """
    pycolmap = import_pycolmap()
    scene = scene.to("cpu")
    check_peer_input(scene, loss, COLMAP_LOSSES, "pycolmap")
    if scene.model == "BAL":
        raise SparsaError("pycolmap bundle adjustment: COLMAP has no BAL camera model")
    rec, point_ids = to_reconstruction(scene, pycolmap)
    options = colmap_options(pycolmap, max_iterations=max_iterations, function_tolerance=function_tolerance,
                             gradient_tolerance=gradient_tolerance, parameter_tolerance=parameter_tolerance,
                             threads=threads, loss=loss, loss_scale=loss_scale)
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    start = time.perf_counter()
    summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary
    seconds = time.perf_counter() - start
    out = from_reconstruction(rec, scene, point_ids)
    final_cost, rmse = ba_cost(out, loss, loss_scale)
    tolerances = {"max_num_iterations": max_iterations, "function_tolerance": function_tolerance,
                  "gradient_tolerance": gradient_tolerance, "parameter_tolerance": parameter_tolerance}
    return PeerRun(name="pycolmap", initial_cost=summary.initial_cost, final_cost=summary.final_cost,
                   recomputed_initial_cost=ba_cost(scene, loss, loss_scale)[0], recomputed_final_cost=final_cost,
                   iterations=summary.num_successful_steps + summary.num_unsuccessful_steps - 1, seconds=seconds,
                   rmse_px=rmse, termination=f"{summary.termination_type.name}: {summary.message}", scene=out,
                   tolerances=tolerances)


def pycolmap_trace(scene: Scene, target: float, *, max_iterations: int, threads: int = -1,
                   **tolerances) -> list[tuple[float, float]]:
    """Cost against time for pycolmap, which logs no iterations: reruns from the same start capped at
    0, 1, 2, 4, ... iterations (Ceres' ``max_num_iterations``), each timed like :func:`run_pycolmap`,
    until a run's cost (our recomputation) is at most ``target`` or the cap reaches ``max_iterations``.

    The cap-0 run (problem building, Ceres' preprocessing and the start's evaluation) runs twice and
    the second is kept, so the first solve of the process does not stand for it.

    Returns:
        ``(seconds, cost)`` per cap, in cap order.
    """
    def capped(cap: int) -> tuple[float, float]:
        run = run_pycolmap(scene, max_iterations=cap, threads=threads, **tolerances)
        return run.seconds, run.recomputed_final_cost

    capped(0)
    trace, cap = [capped(0)], 1
    while trace[-1][1] > target and cap <= max_iterations:
        trace.append(capped(cap))
        cap *= 2
    return trace


def free_intrinsics(model: str) -> list[int]:
    """Indices of a model's optimised parameters under COLMAP's defaults (focal length(s) and
    distortion, not the principal point), as our solver's defaults choose them."""
    return ba.free_intrinsics(model, BAOptions()).nonzero()[:, 0].tolist()


def pack(scene: Scene) -> torch.Tensor:
    """[6 I + K F + 3 P] scipy's variables: per image angle-axis and translation, per camera its F free
    intrinsics (:func:`free_intrinsics`), per point its coordinates."""
    aa = scene.rotations if scene.rotation_format == "angle_axis" else quaternion_to_angle_axis(scene.rotations)
    return torch.cat([torch.cat([aa, scene.translations], 1).flatten(),
                      scene.intrinsics[:, free_intrinsics(scene.model)].flatten(), scene.points.flatten()])


def unpack(x: torch.Tensor, scene: Scene) -> Scene:
    """``scene`` (angle-axis) at the variables ``x`` [6 I + K F + 3 P] of :func:`pack`; poses and points
    are views of ``x`` (differentiable)."""
    free = free_intrinsics(scene.model)
    I, K, F = scene.n_images, scene.n_cameras, len(free)
    poses = x[:6 * I].view(I, 6)
    intrinsics = scene.intrinsics.clone()
    intrinsics[:, free] = x[6 * I:6 * I + K * F].view(K, F)
    return scene.replace(rotations=poses[:, :3], rotation_format="angle_axis", translations=poses[:, 3:],
                         intrinsics=intrinsics, points=x[6 * I + K * F:].view(-1, 3))


def jac_sparsity(scene: Scene) -> scipy.sparse.csr_matrix:
    """[2 M, 6 I + K F + 3 P] 0/1 pattern: residual row ``2 o + c`` depends on its image's pose, its
    camera's free intrinsics and its point."""
    I, K, F = scene.n_images, scene.n_cameras, len(free_intrinsics(scene.model))
    image, point = scene.obs_image.numpy(), scene.obs_point.numpy()
    camera = scene.image_camera.numpy()[image]
    cols = np.concatenate([6 * image[:, None] + np.arange(6), 6 * I + F * camera[:, None] + np.arange(F),
                           6 * I + K * F + 3 * point[:, None] + np.arange(3)], 1)  # [M, 9 + F]
    M, n = scene.n_observations, 6 * I + K * F + 3 * scene.n_points
    rows = np.broadcast_to(2 * np.arange(M)[:, None, None] + np.arange(2)[:, None], (M, 2, cols.shape[1]))
    cols = np.broadcast_to(cols[:, None, :], rows.shape)
    return scipy.sparse.coo_matrix((np.ones(rows.size), (rows.ravel(), cols.ravel())), shape=(2 * M, n)).tocsr()


def robust_residuals(scene: Scene, loss: str, scale: float) -> torch.Tensor:
    """[2 M] residuals whose plain half sum of squares is our robust cost: ``r_o sqrt(rho(s_o) / s_o)``.

    scipy's own ``loss`` acts on each of the 2 M components; Ceres' acts on each observation's
    ``s_o = |r_o|^2``, and so does this.
    """
    r = scene_residuals(scene)
    if loss != "linear":
        r = r * rho_over_s(r.square().sum(-1), loss, scale).sqrt()[:, None]
    return r.flatten()


def run_scipy(scene: Scene, *, max_nfev: int | None = 100, ftol: float = 1e-8, xtol: float = 1e-8,
              gtol: float = 1e-8, loss: str = "linear", f_scale: float = 1.0) -> PeerRun:
    """``scipy.optimize.least_squares`` (trf, finite differences over :func:`jac_sparsity`,
    ``x_scale="jac"``) on our BA cost, without gauge fixing.

    Args:
        scene: the start (any device; the run and its scene are on the CPU); principal points stay fixed.
        max_nfev: residual evaluations allowed, Jacobians' not counted (the start's and one per step).
        ftol, xtol, gtol: scipy's stopping rules.
        loss: ``linear``, ``huber``, ``soft_l1`` or ``cauchy`` with scale ``f_scale`` (pixels), applied
            per observation as Ceres does (:func:`robust_residuals`), not per residual component.
    Returns:
        The run; ``seconds`` times building the Jacobian's sparsity pattern and the ``least_squares``
        call; ``log`` holds the cost after each iteration (scipy's ``callback``).
    """
    scene = scene.to("cpu")
    check_peer_input(scene, loss, SCIPY_LOSSES, "scipy")
    x0 = pack(scene).numpy()

    def fun(x: np.ndarray) -> np.ndarray:
        return robust_residuals(unpack(torch.from_numpy(x), scene), loss, f_scale).numpy()

    initial_cost = 0.5 * float(np.square(fun(x0)).sum())
    log = []

    def first_fun(x: np.ndarray) -> np.ndarray:  # the start's evaluation: the log's first entry
        r = fun(x)
        if not log:
            log.append((time.perf_counter() - start, 0.5 * float(np.square(r).sum())))
        return r

    def callback(intermediate_result) -> None:
        log.append((time.perf_counter() - start, float(intermediate_result.cost)))

    start = time.perf_counter()  # before the problem is built (the Jacobian's sparsity pattern)
    result = scipy.optimize.least_squares(first_fun, x0, jac_sparsity=jac_sparsity(scene), method="trf",
                                          x_scale="jac", ftol=ftol, xtol=xtol, gtol=gtol, max_nfev=max_nfev,
                                          callback=callback)
    seconds = time.perf_counter() - start
    out = unpack(torch.from_numpy(result.x), scene)
    if scene.rotation_format == "quaternion":
        out = out.replace(rotations=angle_axis_to_quaternion(out.rotations), rotation_format="quaternion")
    final_cost, rmse = ba_cost(out, loss, f_scale)
    return PeerRun(name="scipy", initial_cost=initial_cost, final_cost=float(result.cost),
                   recomputed_initial_cost=ba_cost(scene, loss, f_scale)[0], recomputed_final_cost=final_cost,
                   iterations=result.nfev - 1, seconds=seconds, rmse_px=rmse,
                   termination=f"status {result.status}: {result.message}", scene=out, log=log,
                   tolerances={"max_nfev": max_nfev, "ftol": ftol, "xtol": xtol, "gtol": gtol})
