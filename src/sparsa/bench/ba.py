"""``sparsa bench ba``: our bundle adjustment against pycolmap (COLMAP's BA on Ceres) and
``scipy.optimize.least_squares`` on seeded synthetic scenes, from the same start, under the same
stopping rules.

Every solver runs in its own spawned process on the same scene (generated once from its seeded
spec and written as a COLMAP model that each process reads), so its peak resident memory is its
own. Every solver runs with the same :class:`StoppingRules` (Ceres' meanings; scipy's ``ftol``,
``xtol``, ``gtol`` and ``max_nfev`` are the same rules under its names), and every timer starts
before the solver builds its problem (ours: index arrays and float64 copies; pycolmap: the Ceres
problem; scipy: the Jacobian's sparsity pattern) and stops when it returns; reading the scene and
converting it to the peer's types are outside all of them. Ours solves a tiny scene first, untimed,
for numba's JIT.

For each scene the row reports, besides the final cost and the median ``seconds`` of ``repeats``
solves:

* ``seconds_to_target``: when the solver's cost first came within ``target_rel`` (relative) of the
  lowest final cost any solver reached on that scene, from its per-iteration log (ours, scipy's
  ``callback``) or, for pycolmap, which logs nothing, from reruns capped at 0, 1, 2, 4, ...
  iterations (:func:`sparsa.bench.ba_peers.pycolmap_trace`); None when it never did;
* ``seconds_per_iteration``: (seconds - the time of the start's evaluation) / iterations.
"""

import multiprocessing
import resource
import tempfile
from dataclasses import asdict, dataclass, field

import torch

from sparsa.bench.results import machine, write_results

RSS_UNIT = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class StoppingRules:
    """The stopping rules every solver runs with: Ceres' defaults, with the function tolerance
    tightened from 1e-6 to 1e-10 so that every solver's final cost lies well inside the 1e-6 band
    that ``seconds_to_target`` measures. An accepted step changing the cost by less than
    ``function_tolerance`` of it, a largest gradient entry below ``gradient_tolerance``, or a step
    ``|dx| <= parameter_tolerance * (|x| + parameter_tolerance)`` stops; so does ``max_iterations``
    (accepted and rejected steps both count)."""

    max_iterations: int = 100
    function_tolerance: float = 1e-10
    gradient_tolerance: float = 1e-10
    parameter_tolerance: float = 1e-8


@dataclass(frozen=True)
class BABenchSettings:
    """Scenes as (cameras, points); scipy only up to ``scipy_max_cameras`` (finite differences);
    scenes of ``single_solve_cameras`` cameras or more are solved once instead of ``repeats`` times."""

    scenes: tuple[tuple[int, int], ...] = ((50, 5000), (200, 20000), (1000, 100000), (3000, 300000))
    seed: int = 1
    scipy_max_cameras: int = 200
    threads: int = 0  # 0: every core
    repeats: int = 3  # solves per solver and scene; seconds is their median
    single_solve_cameras: int = 3000
    rules: StoppingRules = field(default_factory=StoppingRules)
    target_rel: float = 1e-6

    @classmethod
    def quick(cls) -> "BABenchSettings":
        return cls(scenes=((50, 5000),))

    def repeats_for(self, cameras: int) -> int:
        return 1 if cameras >= self.single_solve_cameras else self.repeats


def spec_of(cameras: int, points: int, seed: int) -> str:
    return f"synthetic:cameras={cameras},points={points},seed={seed}"


def peak_rss_bytes() -> int:
    """This process's resident high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries that
    across fork + exec, so a spawned child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT


def reset_peak_rss() -> None:
    """Restart the high-water mark at the current RSS (Linux >= 4.0; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_one(solver: str, problem: str, device: str, threads: int, repeats: int = 1,
            rules: StoppingRules = StoppingRules()) -> dict:
    """``repeats`` solves of ``problem`` (a scene spec or file) from the same start in this (fresh)
    process under ``rules``; the median time and the last solve's other measurements, with its
    ``log`` of ``[seconds, cost]`` per iteration (empty for pycolmap)."""
    from sparsa.sfm.scenes import load_scene

    if threads:
        torch.set_num_threads(threads)
    scene, _ = load_scene(problem)
    if solver == "sparsa":
        from sparsa.sfm import BAOptions, solve_ba

        options = BAOptions(**asdict(rules))
        solve_ba(load_scene("synthetic:cameras=3,points=30,seed=0")[0], BAOptions(max_iterations=2), device=device)
        reset_peak_rss()
        before = peak_rss_bytes()
        times = []
        for _ in range(repeats):
            _, s = solve_ba(scene, options, device=device)
            times.append(s.setup_seconds + s.seconds)
        row = {"initial_cost": s.initial_cost, "final_cost": s.final_cost, "iterations": s.iterations,
               "rmse_px": s.final_rmse, "linear_solver": s.linear_solver_used, "termination": s.message,
               "log": [[s.setup_seconds + e.seconds, e.cost] for e in s.log], "gpu_peak_bytes": s.peak_memory_bytes,
               "tolerances": {k: v for k, v in asdict(options).items() if k in asdict(rules)}}
    else:
        from sparsa.bench.ba_peers import run_pycolmap, run_scipy

        reset_peak_rss()
        before = peak_rss_bytes()
        times = []
        for _ in range(repeats):
            if solver == "pycolmap":
                p = run_pycolmap(scene, threads=threads or -1, **asdict(rules))
            else:
                p = run_scipy(scene, max_nfev=rules.max_iterations, ftol=rules.function_tolerance,
                              xtol=rules.parameter_tolerance, gtol=rules.gradient_tolerance)
            times.append(p.seconds)
        row = {"initial_cost": p.recomputed_initial_cost, "final_cost": p.recomputed_final_cost,
               "iterations": p.iterations, "rmse_px": p.rmse_px, "termination": p.termination,
               "log": [list(e) for e in p.log], "tolerances": p.tolerances}
    row.update(seconds=sorted(times)[len(times) // 2], seconds_all=times, peak_rss_bytes=peak_rss_bytes(),
               rss_growth_bytes=peak_rss_bytes() - before, observations=scene.n_observations)
    return row


def trace_pycolmap(problem: str, target: float, threads: int, rules: StoppingRules) -> list[list[float]]:
    """pycolmap's ``[seconds, cost]`` at iteration caps 0, 1, 2, 4, ... until ``target`` (this process)."""
    from sparsa.bench.ba_peers import pycolmap_trace
    from sparsa.sfm.scenes import load_scene

    if threads:
        torch.set_num_threads(threads)
    return [list(e) for e in pycolmap_trace(load_scene(problem)[0], target, threads=threads or -1, **asdict(rules))]


def run_isolated(fn, *args):
    """``fn(*args)`` in a spawned process (its own memory high-water mark)."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(fn, args)
    finally:  # close + join, not terminate: a SIGTERM makes pycolmap's glog print a stack trace
        pool.close()
        pool.join()


def seconds_to_target(log: list[list[float]], target: float) -> float | None:
    """The first time in ``log`` (``[seconds, cost]`` in time order) whose cost is at most ``target``."""
    return next((t for t, cost in log if cost <= target), None)


def add_target_columns(rows: list[dict], target: float) -> None:
    """Give every row of one scene ``seconds_to_target`` and ``seconds_per_iteration``."""
    for r in rows:
        r["seconds_to_target"] = seconds_to_target(r["log"], target)
        start = r["log"][0][0] if r["log"] else 0.0
        r["seconds_per_iteration"] = (r["seconds"] - start) / r["iterations"] if r["iterations"] else None


def solvers_for(cameras: int, s: BABenchSettings) -> list[tuple[str, str]]:
    """(solver, device) pairs to run on a scene of ``cameras`` cameras."""
    out = [("sparsa", "cpu")]
    if torch.cuda.is_available():
        out.append(("sparsa", "cuda"))
    out.append(("pycolmap", "cpu"))
    if cameras <= s.scipy_max_cameras:
        out.append(("scipy", "cpu"))
    return out


def run_ba_bench(s: BABenchSettings, *, out_dir: str, name: str = "ba", progress: bool = True) -> dict:
    """Run every solver on every scene; write ``<name>.{json,md,png}``; return the payload."""
    from tqdm.auto import tqdm

    from sparsa.sfm.scenes import load_scene, save_scene

    rows = []
    jobs = sum(len(solvers_for(c, s)) + 1 for c, _ in s.scenes)  # + pycolmap's capped reruns
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=jobs, desc="bench ba", disable=not progress) as bar:
        for cameras, points in s.scenes:  # every solver reads the same COLMAP model (start, observations)
            model = save_scene(load_scene(spec_of(cameras, points, s.seed))[0], f"{tmp}/{cameras}")
            scene_rows = []
            for solver, device in solvers_for(cameras, s):
                row = run_isolated(run_one, solver, model, device, s.threads, s.repeats_for(cameras), s.rules)
                scene_rows.append({"cameras": cameras, "points": points, "solver": solver, "device": device, **row})
                bar.update(1)
            target = min(r["final_cost"] for r in scene_rows) * (1 + s.target_rel)
            colmap = next(r for r in scene_rows if r["solver"] == "pycolmap")
            colmap["log"] = run_isolated(trace_pycolmap, model, target, s.threads, s.rules)
            if colmap["log"][-1][1] > target:  # the caps stopped short: the full solve is the last point
                colmap["log"].append([colmap["seconds"], colmap["final_cost"]])
            bar.update(1)
            add_target_columns(scene_rows, target)
            rows += scene_rows
    for row in rows:
        ref = next(r for r in rows if r["cameras"] == row["cameras"] and r["solver"] == "pycolmap")
        row["cost_rel_to_pycolmap"] = (row["final_cost"] - ref["final_cost"]) / ref["final_cost"]
        row["speedup_over_pycolmap"] = ref["seconds"] / row["seconds"]
        if row["seconds_to_target"] and ref["seconds_to_target"]:
            row["target_speedup_over_pycolmap"] = ref["seconds_to_target"] / row["seconds_to_target"]
    payload = {"machine": machine("cuda" if torch.cuda.is_available() else "cpu"), "settings": asdict(s),
               "timer": "starts before each solver builds its problem", "rows": rows}
    write_results(out_dir, name, payload, markdown(payload), figure(rows))
    return payload


def markdown(payload: dict) -> str:
    m, rules = payload["machine"], payload["settings"]["rules"]
    lines = [f"# Bundle adjustment: sparsa vs pycolmap (Ceres) vs scipy ({m['date']}, {m['cpu']}, {m['cores']} cores"
             + (f", {m['gpu']}" if "gpu" in m else "") + ")", "",
             f"Every solver: at most {rules['max_iterations']} iterations, function tolerance "
             f"{rules['function_tolerance']:g}, gradient tolerance {rules['gradient_tolerance']:g}, parameter "
             f"tolerance {rules['parameter_tolerance']:g} (scipy: max_nfev, ftol, gtol, xtol). Every timer "
             "starts before the solver builds its problem. Target: within "
             f"{payload['settings']['target_rel']:g} (relative) of the lowest final cost of the scene.", "",
             "| cameras | points | observations | solver | device | final cost | rel. to pycolmap | iterations "
             "| seconds | s / iteration | s to target | x pycolmap (to target) | rmse px | peak RSS MiB "
             "| solve growth MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['cameras']} | {r['points']} | {r['observations']} | {r['solver']} | {r['device']} | "
                     f"{r['final_cost']:.10e} | {r['cost_rel_to_pycolmap']:+.1e} | {r['iterations']} | "
                     f"{r['seconds']:.3f} | {number(r['seconds_per_iteration'], '.3f')} | "
                     f"{number(r['seconds_to_target'], '.3f')} | {number(r.get('target_speedup_over_pycolmap'), '.2f')} | "
                     f"{r['rmse_px']:.4f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['rss_growth_bytes'] / 2**20:.0f} |")
    lines += ["", "Seconds: the median of the solves. s / iteration: (seconds - the time of the start's evaluation) "
              "/ iterations. s to target: the first logged time within the target (pycolmap: reruns capped at 0, "
              "1, 2, 4, ... iterations, so an upper bound at those caps); - where never reached. Peak RSS: the "
              "solver process's resident high-water mark during the solves (VmHWM reset after loading; Python, "
              "torch and the scene included); solve growth: how far the solves raised it above the resident size "
              "after loading."]
    return "\n".join(lines) + "\n"


def number(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = sorted({(r["cameras"], r["points"]) for r in rows})
    fig, axes = plt.subplots(1, len(scenes), figsize=(5 * len(scenes), 4), squeeze=False)
    for ax, (c, p) in zip(axes[0], scenes):
        for r in (r for r in rows if r["cameras"] == c):
            t, cost = zip(*r["log"])
            style = "s--" if r["solver"] == "pycolmap" else "o-"  # pycolmap: capped reruns
            ax.plot([max(x, 1e-3) for x in t], cost, style, label=f"{r['solver']} ({r['device']})")
        ax.set(xscale="log", yscale="log", xlabel="seconds (problem building included)",
               ylabel="cost 1/2 sum |r|^2", title=f"{c} cameras, {p} points")
        ax.legend()
    fig.tight_layout()
    return fig
