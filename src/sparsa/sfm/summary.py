"""What a bundle-adjustment solve reports (Ceres' Summary: brief and full reports, an iteration log)."""

from dataclasses import asdict, dataclass, field


@dataclass
class IterationLog:
    iteration: int
    cost: float
    cost_change: float
    gradient_max_norm: float
    step_norm: float
    relative_decrease: float
    trust_region_radius: float
    linear_iterations: int
    step_accepted: bool
    seconds: float


@dataclass
class BASummary:
    """Outcome of a least-squares solve (:func:`sparsa.sfm.solve_ba`, :func:`sparsa.sfm.solve_gp`).
    Costs are 1/2 Σ rho(|r|²); rmse = sqrt(Σ |r|² / observations) (pixels for BA)."""

    termination: str = "NO_CONVERGENCE"  # CONVERGENCE | NO_CONVERGENCE | FAILURE
    message: str = ""
    initial_cost: float = 0.0
    final_cost: float = 0.0
    initial_rmse: float = 0.0
    final_rmse: float = 0.0
    iterations: int = 0
    successful_steps: int = 0
    unsuccessful_steps: int = 0
    linear_iterations: int = 0
    linear_solver_used: str = ""
    device: str = "cpu"
    observations: int = 0
    camera_unknowns: int = 0
    point_unknowns: int = 0
    seconds: float = 0.0  # the minimiser, from its first linearisation to the end (log times count from there)
    setup_seconds: float = 0.0  # building the problem before it (index arrays, float64 copies, device transfer)
    linear_solver_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    log: list[IterationLog] = field(default_factory=list)

    def brief(self) -> str:
        return (f"Ceres-style report: iterations {self.iterations} ({self.successful_steps} accepted), "
                f"cost {self.initial_cost:.6e} -> {self.final_cost:.6e}, rmse {self.initial_rmse:.4f} -> "
                f"{self.final_rmse:.4f}, {self.seconds:.3f} s, {self.termination}: {self.message}")

    def full(self) -> str:
        head = f"{'iter':>4} {'cost':>14} {'cost_change':>12} {'|gradient|':>10} {'|step|':>10} {'tr_ratio':>9} " \
               f"{'tr_radius':>9} {'ls_iter':>7} {'time_s':>8}"
        rows = [f"{e.iteration:>4} {e.cost:>14.6e} {e.cost_change:>12.3e} {e.gradient_max_norm:>10.2e} "
                f"{e.step_norm:>10.2e} {e.relative_decrease:>9.2e} {e.trust_region_radius:>9.2e} "
                f"{e.linear_iterations:>7} {e.seconds:>8.3f}" for e in self.log]
        return "\n".join([head, *rows, self.brief()])

    def to_dict(self, *, log: bool = False) -> dict:
        d = asdict(self)
        if not log:
            del d["log"]
        return d
