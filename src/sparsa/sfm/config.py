"""Options of the bundle-adjustment solver: every default in one frozen dataclass (Ceres-like names)."""

from dataclasses import asdict, dataclass

from sparsa.errors import SparsaError

VERSION = 1
LOSSES = ("trivial", "huber", "cauchy", "soft_l1")
LINEAR_SOLVERS = ("auto", "dense_schur", "iterative_schur")


@dataclass(frozen=True)
class LMOptions:
    """Levenberg-Marquardt with a Schur-complement linear solver (shared by BA and GP).

    Args:
        max_iterations: LM iterations (accepted and rejected steps both count, as in Ceres).
        function_tolerance: stop when an accepted step changes the cost by less than this share
            (1e-8, tighter than Ceres' 1e-6: robust losses converge linearly, and on a Huber
            problem with 2% outliers 1e-6 stopped 8.5e-6 above pycolmap's final cost, 1e-8 5e-8).
        gradient_tolerance: stop when the largest gradient entry is below this.
        parameter_tolerance: stop when |step| <= tol * (|x| + tol).
        initial_trust_region_radius: mu in ``(JᵀJ + D/mu) δ = -Jᵀr``; large mu is close to Gauss-Newton.
        max_trust_region_radius, min_trust_region_radius: bounds on mu (below the minimum: failure).
        min_relative_decrease: accept a step when actual / predicted decrease exceeds this.
        min_lm_diagonal, max_lm_diagonal: clamp of diag(JᵀJ) used as the damping D.
        loss, loss_scale: robust loss (``trivial``, ``huber``, ``cauchy``, ``soft_l1``) and its scale
            in pixels; cost = 1/2 Σ rho(|r|²) as in Ceres.
        linear_solver: ``dense_schur`` (Cholesky of the explicit reduced camera system),
            ``iterative_schur`` (matrix-free reduced system, PCG with a block-Jacobi preconditioner)
            or ``auto`` (dense up to ``dense_schur_max_size`` camera-side unknowns: on 2 cores dense
            took 1.4 s and PCG 3.1 s at 200 cameras, 2000 unknowns).
        pcg_tolerance: relative residual at which PCG stops (an inexact Newton step; at 1000
            cameras 1e-4 took 91 CG iterations and 7.6 s against 417 and 16.5 s at 1e-8, to the
            same final cost); pcg_max_iterations: its cap.
    """

    max_iterations: int = 100
    function_tolerance: float = 1e-8
    gradient_tolerance: float = 1e-10
    parameter_tolerance: float = 1e-8
    initial_trust_region_radius: float = 1e4
    max_trust_region_radius: float = 1e16
    min_trust_region_radius: float = 1e-32
    min_relative_decrease: float = 1e-3
    min_lm_diagonal: float = 1e-6
    max_lm_diagonal: float = 1e32
    loss: str = "trivial"
    loss_scale: float = 1.0
    linear_solver: str = "auto"
    dense_schur_max_size: int = 3000
    pcg_tolerance: float = 1e-4
    pcg_max_iterations: int = 500

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise SparsaError(f"--loss {self.loss}: choose one of {', '.join(LOSSES)}")
        if self.linear_solver not in LINEAR_SOLVERS:
            raise SparsaError(f"--linear-solver {self.linear_solver}: choose one of {', '.join(LINEAR_SOLVERS)}")
        if self.max_iterations < 0:
            raise SparsaError(f"--max-iters {self.max_iterations}: must be >= 0")
        if not self.loss_scale > 0:
            raise SparsaError(f"--loss-scale {self.loss_scale}: must be > 0")
        for name in ("function_tolerance", "gradient_tolerance", "parameter_tolerance", "pcg_tolerance"):
            if not getattr(self, name) >= 0:
                raise SparsaError(f"{name} {getattr(self, name)}: must be >= 0")
        if not 0 < self.initial_trust_region_radius <= self.max_trust_region_radius:
            raise SparsaError("initial_trust_region_radius must lie in (0, max_trust_region_radius]")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}


@dataclass(frozen=True)
class BAOptions(LMOptions):
    """Bundle adjustment: :class:`LMOptions` plus which variables vary.

    Args:
        refine_focal_length, refine_principal_point, refine_extra_params: which intrinsics vary
            (COLMAP's defaults: focal and distortion refined, principal point fixed).
        fixed_images: indices of images whose pose stays fixed.
        refine_points: optimise the 3D points (False: motion-only BA).
    """

    refine_focal_length: bool = True
    refine_principal_point: bool = False
    refine_extra_params: bool = True
    fixed_images: tuple[int, ...] = ()
    refine_points: bool = True


@dataclass(frozen=True)
class GPOptions(LMOptions):
    """Global positioning (GLOMAP / InstantSfM): :class:`LMOptions` with their defaults
    (Huber 0.1 on the ray residual) plus the random start.

    Args:
        init_range: camera centres and points start uniform in [-init_range, init_range]³.
        seed: seed of that start.
    """

    loss: str = "huber"
    loss_scale: float = 0.1
    function_tolerance: float = 1e-8
    init_range: float = 100.0
    seed: int = 0


SFM_BA_OPTIONS = BAOptions(loss="huber")  # sfm's BA rounds: a robust loss, GP's positions being rough
# ``sparsa sfm DATABASE.db`` stops its solvers where COLMAP's global mapper (GLOMAP) does: GP at 100
# iterations or a function tolerance of 1e-5 (GLOMAP's OptimizationBaseOptions), each BA at 200
# iterations or 1e-5 (COLMAP's GlobalMapperOptions::bundle_adjustment), so `bench sfm` compares
# the two under the same stopping rules. The reduced camera system is factored densely up to 8000
# camera-side unknowns (1333 images; 288 MB and about a second per step at 1000 images on 2 cores):
# on a ring of 1000 images PCG's iterations grow with the ring's length (over 7 minutes measured).
MAPPER_GP_OPTIONS = GPOptions(function_tolerance=1e-5, dense_schur_max_size=8000)
MAPPER_BA_OPTIONS = BAOptions(loss="huber", function_tolerance=1e-5, max_iterations=200, dense_schur_max_size=8000)
SFM_FILTER_PX = 4.0  # sfm drops observations above 3x, 2x, 1x this reprojection error after BA rounds 1-3 (px)


@dataclass(frozen=True)
class RotationAveragingOptions:
    """L1 then Geman-McClure IRLS (:mod:`sparsa.sfm.rotation_averaging`).

    Args:
        l1_iterations: L1 steps (weights 1 / max(|r|, l1_eps_deg)).
        irls_iterations: at most this many Geman-McClure steps.
        sigma_deg: the Geman-McClure scale (GLOMAP's 5°).
        step_tolerance_deg: stop when no rotation moves more than this in a step.
    """

    l1_iterations: int = 10
    irls_iterations: int = 100
    sigma_deg: float = 5.0
    step_tolerance_deg: float = 1e-3
    l1_eps_deg: float = 1e-3


@dataclass(frozen=True)
class GlobalMapperOptions:
    """What ``sparsa sfm DATABASE.db`` keeps between its stages (GLOMAP's defaults where it has one).

    Args:
        min_inliers: pairs with fewer verified inlier matches in front of both cameras are dropped.
        min_pair_angle_deg: pairs whose median triangulation angle is below this are dropped.
        max_triangle_error_deg: edges whose median loop error over their triangles exceeds this are dropped.
        max_rotation_error_deg: after rotation averaging, edges disagreeing more than this are
            dropped and the rotations averaged again.
        min_track_views, max_track_views: tracks outside this range are dropped.
        max_tracks: keep at most this many tracks, the longest (None: all).
        max_gp_angle_deg: after global positioning, observations whose ray is further than this from
            the direction to their point (or behind the camera) are dropped before BA (GLOMAP's 1°).
        min_image_observations: images left with fewer observations by a filter are dropped (and
            counted as left out).
        min_triangulation_angle_deg: retriangulated tracks need views this far apart.
        rotation: the rotation averaging's options.
    """

    min_inliers: int = 15
    min_pair_angle_deg: float = 1.0
    max_triangle_error_deg: float = 5.0
    max_rotation_error_deg: float = 10.0
    min_track_views: int = 3
    max_track_views: int = 100
    max_tracks: int | None = None
    max_gp_angle_deg: float = 1.0
    min_image_observations: int = 10
    min_triangulation_angle_deg: float = 1.0
    rotation: RotationAveragingOptions = RotationAveragingOptions()

    def __post_init__(self):
        if self.min_inliers < 5:
            raise SparsaError(f"--min-inliers {self.min_inliers}: must be >= 5 (a relative pose needs five matches)")
        if not 2 <= self.min_track_views <= self.max_track_views:
            raise SparsaError(f"track views {self.min_track_views}..{self.max_track_views}: need 2 <= min <= max")
        if self.max_tracks is not None and self.max_tracks < 1:
            raise SparsaError(f"--max-tracks {self.max_tracks}: must be >= 1")
