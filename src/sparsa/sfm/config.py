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
SFM_FILTER_PX = 4.0  # sfm drops observations above 3x, 2x, 1x this reprojection error after BA rounds 1-3 (px)
