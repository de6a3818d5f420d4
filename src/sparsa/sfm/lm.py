"""Levenberg-Marquardt with Ceres' trust-region strategy, for any :class:`~sparsa.sfm.lsq.Problem`.

Each iteration solves ``(JᵀJ + D/mu) δ = -Jᵀr`` through the Schur complement
(:mod:`sparsa.sfm.schur`), takes the step if the actual cost decrease is at least
``min_relative_decrease`` of the linear model's prediction, and then grows mu by
``1 / max(1/3, 1 - (2 rho - 1)^3)``; otherwise shrinks mu by nu and doubles nu (Nielsen's rule,
as in Ceres' LevenbergMarquardtStrategy). Stops on Ceres' function, gradient and parameter
tolerances or after ``max_iterations``.
"""

import math
import time

import torch
from tqdm.auto import tqdm

from sparsa.sfm.comm import LocalComm
from sparsa.sfm.config import LMOptions
from sparsa.sfm.lsq import Linearization, Problem
from sparsa.sfm.pcg import pcg
from sparsa.sfm.schur import SchurLayout, SchurSystem
from sparsa.sfm.summary import BASummary, IterationLog


def lm_diagonal(problem: Problem, lin: Linearization, options: LMOptions,
                comm: LocalComm = LocalComm()) -> tuple[torch.Tensor, torch.Tensor]:
    """diag(JᵀJ) clamped to [min_lm_diagonal, max_lm_diagonal]: camera-side [C_total], points [P, 3]."""
    dc = comm.sum_(lin.Jc.new_zeros(problem.n_camera_unknowns).index_add_(
        0, problem.cols.reshape(-1), (lin.Jc * lin.Jc).sum(1).reshape(-1)))
    dp = lin.Jx.new_zeros(problem.n_points, 3).index_add_(0, problem.obs_point, (lin.Jx * lin.Jx).sum(1))
    lo, hi = options.min_lm_diagonal, options.max_lm_diagonal
    return dc.clamp(lo, hi), dp.clamp(lo, hi)


def solve_camera_step(system: SchurSystem, b: torch.Tensor, solver: str, options: LMOptions):
    """dc from the reduced camera system; (dc, linear iterations) or (None, 0) if S is not SPD."""
    if solver == "dense_schur":
        L, info = torch.linalg.cholesky_ex(system.dense())
        if int(info) != 0:
            return None, 0
        return torch.cholesky_solve(b[:, None], L)[:, 0], 1
    inverses = system.block_jacobi()
    return pcg(system.matvec, b, lambda r: system.precondition(inverses, r), tolerance=options.pcg_tolerance,
               max_iterations=options.pcg_max_iterations)


def choose_solver(problem: Problem, options: LMOptions) -> str:
    if options.linear_solver != "auto":
        return options.linear_solver
    return "dense_schur" if problem.n_camera_unknowns <= options.dense_schur_max_size else "iterative_schur"


def linearize_all(problem: Problem, state, options: LMOptions, comm: LocalComm) -> Linearization:
    """The problem's linearization with the cost and squared error summed over processes."""
    lin = problem.linearize(state, options.loss, options.loss_scale)
    lin.cost, lin.sq_error = comm.sum(lin.cost), comm.sum(lin.sq_error)
    return lin


def max_gradient(g_c: torch.Tensor, g_p: torch.Tensor, comm: LocalComm) -> float:
    return max(float(g_c.abs().max()) if g_c.numel() else 0.0,
               comm.max(float(g_p.abs().max()) if g_p.numel() else 0.0))


def trial_step(problem: Problem, state, lin: Linearization, system: SchurSystem, g_c, g_p, solver: str,
               options: LMOptions, comm: LocalComm, summary: BASummary):
    """Solve for the step and score it: (candidate state or None, new cost, model decrease, |step|,
    linear iterations, converged-on-parameter-tolerance)."""
    t0 = time.perf_counter()
    dc, linear_its = solve_camera_step(system, system.rhs(g_c, g_p), solver, options)
    dp = system.back_substitute(dc, g_p) if dc is not None else None
    summary.linear_solver_seconds += time.perf_counter() - t0
    summary.linear_iterations += linear_its
    if dc is None or not bool(torch.isfinite(dc).all()) or not bool(torch.isfinite(dp).all()):
        return None, math.inf, 0.0, 0.0, linear_its, False
    step_norm = math.sqrt(float((dc * dc).sum()) + comm.sum(float((dp * dp).sum())))
    if step_norm <= options.parameter_tolerance * (problem.state_norm(state, comm) + options.parameter_tolerance):
        return None, math.inf, 0.0, step_norm, linear_its, True
    Jd = system.J_c(dc) + (lin.Jx @ dp[problem.obs_point][:, :, None])[..., 0]
    model_change = -comm.sum(float((lin.r * Jd).sum() + 0.5 * (Jd * Jd).sum()))
    candidate = problem.retract(state, dc, dp)
    new_cost = comm.sum(problem.cost(candidate, options.loss, options.loss_scale))
    return candidate, new_cost, model_change, step_norm, linear_its, False


def levenberg_marquardt(problem: Problem, state, options: LMOptions, *, device: str = "cpu", progress: bool = False,
                        comm: LocalComm = LocalComm(), desc: str = "least squares"):
    """Minimise 1/2 Σ rho(|r_o|²) from ``state``; returns (final state, :class:`BASummary`)."""
    start_time = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    solver = choose_solver(problem, options)
    observations = int(comm.sum(problem.obs_point.shape[0]))
    summary = BASummary(linear_solver_used=solver, device=device, observations=observations,
                        camera_unknowns=int(problem.free_camera.sum()),
                        point_unknowns=3 * int(comm.sum(int(problem.free_point.sum()))))
    lin = linearize_all(problem, state, options, comm)
    summary.initial_cost = lin.cost
    summary.initial_rmse = math.sqrt(lin.sq_error / observations)
    mu, nu = options.initial_trust_region_radius, 2.0
    layout = SchurLayout.of(problem) if problem.obs_point.device.type == "cpu" else None
    system = SchurSystem(problem, lin, *lm_diagonal(problem, lin, options, comm), mu, comm, layout)
    g_c, g_p = system.gradient()
    g_max = max_gradient(g_c, g_p, comm)
    summary.log.append(IterationLog(0, lin.cost, 0.0, g_max, 0.0, 0.0, mu, 0, True, time.perf_counter() - start_time))
    bar = tqdm(total=options.max_iterations, desc=desc, unit="it", disable=not progress or comm.rank != 0)
    if g_max <= options.gradient_tolerance:
        summary.termination, summary.message = "CONVERGENCE", "gradient tolerance reached at the start"
    while summary.termination != "CONVERGENCE" and summary.iterations < options.max_iterations:
        summary.iterations += 1
        candidate, new_cost, model_change, step_norm, linear_its, small_step = trial_step(
            problem, state, lin, system, g_c, g_p, solver, options, comm, summary)
        if small_step:
            summary.termination, summary.message = "CONVERGENCE", "parameter tolerance reached"
            break
        change = lin.cost - new_cost if candidate is not None else 0.0
        rel = change / model_change if model_change > 0 and math.isfinite(new_cost) else -math.inf
        accepted = rel > options.min_relative_decrease
        if accepted:
            old_cost, state = lin.cost, candidate
            mu = min(mu / max(1 / 3, 1 - (2 * rel - 1) ** 3), options.max_trust_region_radius)
            nu = 2.0
            summary.successful_steps += 1
            lin = linearize_all(problem, state, options, comm)
        else:
            mu, nu = mu / nu, 2 * nu
            summary.unsuccessful_steps += 1
        system = SchurSystem(problem, lin, *lm_diagonal(problem, lin, options, comm), mu, comm, layout)
        if accepted:
            g_c, g_p = system.gradient()
            g_max = max_gradient(g_c, g_p, comm)
        summary.log.append(IterationLog(summary.iterations, lin.cost, change, g_max, step_norm, rel, mu, linear_its,
                                        accepted, time.perf_counter() - start_time))
        bar.update(1)
        bar.set_postfix(cost=f"{lin.cost:.6e}")
        if accepted and abs(change) <= options.function_tolerance * old_cost:
            summary.termination, summary.message = "CONVERGENCE", "function tolerance reached"
        elif accepted and g_max <= options.gradient_tolerance:
            summary.termination, summary.message = "CONVERGENCE", "gradient tolerance reached"
        elif mu < options.min_trust_region_radius:
            summary.termination, summary.message = "FAILURE", "trust region radius below the minimum"
            break
    bar.close()
    if summary.termination == "NO_CONVERGENCE":
        summary.message = f"maximum number of iterations ({options.max_iterations}) reached"
    summary.final_cost = lin.cost
    summary.final_rmse = math.sqrt(lin.sq_error / observations)
    summary.seconds = time.perf_counter() - start_time
    if device.startswith("cuda"):
        summary.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return state, summary
