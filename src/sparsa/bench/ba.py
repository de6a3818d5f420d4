"""``sparsa bench ba``: our bundle adjustment against pycolmap (COLMAP's BA on Ceres) and
``scipy.optimize.least_squares`` on seeded synthetic scenes, from the same start.

Every solver runs in its own spawned process on the same scene (generated once from its seeded
spec and written as a COLMAP model that each process reads), so its peak resident memory is its
own; seconds are the solve alone (scene building and, for ours,
one warm-up solve of a tiny scene for numba's JIT are excluded), the median of ``repeats`` solves. Ours runs with its defaults,
pycolmap with COLMAP's (function and parameter tolerance 0, gradient tolerance 1e-4), scipy with
trf, ``jac_sparsity``, ``x_scale='jac'`` and ftol = xtol = gtol = 1e-8.
"""

import multiprocessing
import resource
import tempfile
from dataclasses import asdict, dataclass

import torch

from sparsa.bench.results import machine, write_results

RSS_UNIT = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class BABenchSettings:
    """Scenes as (cameras, points); scipy only up to ``scipy_max_cameras`` (finite differences)."""

    scenes: tuple[tuple[int, int], ...] = ((50, 5000), (200, 20000), (1000, 100000))
    seed: int = 1
    scipy_max_cameras: int = 200
    threads: int = 0  # 0: every core
    repeats: int = 3  # solves per solver and scene; seconds is their median

    @classmethod
    def quick(cls) -> "BABenchSettings":
        return cls(scenes=((50, 5000),))


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


def run_one(solver: str, problem: str, device: str, threads: int, repeats: int = 1) -> dict:
    """``repeats`` solves of ``problem`` (a scene spec or file) from the same start in this (fresh)
    process; the median time and the last solve's other measurements."""
    from sparsa.sfm.scenes import load_scene

    if threads:
        torch.set_num_threads(threads)
    scene, _ = load_scene(problem)
    if solver == "sparsa":
        from sparsa.sfm import BAOptions, solve_ba

        solve_ba(load_scene("synthetic:cameras=3,points=30,seed=0")[0], BAOptions(max_iterations=2), device=device)
        reset_peak_rss()
        before = peak_rss_bytes()
        times = []
        for _ in range(repeats):
            _, s = solve_ba(scene, BAOptions(), device=device)
            times.append(s.seconds)
        row = {"initial_cost": s.initial_cost, "final_cost": s.final_cost, "iterations": s.iterations,
               "seconds": s.seconds, "rmse_px": s.final_rmse, "linear_solver": s.linear_solver_used,
               "log": [[e.seconds, e.cost] for e in s.log], "gpu_peak_bytes": s.peak_memory_bytes}
    else:
        from sparsa.bench.ba_peers import run_pycolmap, run_scipy

        reset_peak_rss()
        before = peak_rss_bytes()
        times = []
        for _ in range(repeats):
            p = run_pycolmap(scene, threads=threads or -1) if solver == "pycolmap" else run_scipy(scene)
            times.append(p.seconds)
        row = {"initial_cost": p.recomputed_initial_cost, "final_cost": p.recomputed_final_cost,
               "iterations": p.iterations, "seconds": p.seconds, "rmse_px": p.rmse_px, "termination": p.termination,
               "log": []}
    row.update(seconds=sorted(times)[len(times) // 2], seconds_all=times, peak_rss_bytes=peak_rss_bytes(), rss_growth_bytes=peak_rss_bytes() - before,
               observations=scene.n_observations)
    return row


def run_isolated(solver: str, problem: str, device: str, threads: int, repeats: int) -> dict:
    """:func:`run_one` in a spawned process (its own memory high-water mark)."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(run_one, (solver, problem, device, threads, repeats))
    finally:  # close + join, not terminate: a SIGTERM makes pycolmap's glog print a stack trace
        pool.close()
        pool.join()


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
    jobs = [(c, p, solver, device) for c, p in s.scenes for solver, device in solvers_for(c, s)]
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(jobs), desc="bench ba", disable=not progress) as bar:
        for cameras, points in s.scenes:  # every solver reads the same COLMAP model (start, observations)
            model = save_scene(load_scene(spec_of(cameras, points, s.seed))[0], f"{tmp}/{cameras}")
            for solver, device in solvers_for(cameras, s):
                row = run_isolated(solver, model, device, s.threads, s.repeats)
                rows.append({"cameras": cameras, "points": points, "solver": solver, "device": device, **row})
                bar.update(1)
    for row in rows:
        ref = next(r for r in rows if r["cameras"] == row["cameras"] and r["solver"] == "pycolmap")
        row["cost_rel_to_pycolmap"] = (row["final_cost"] - ref["final_cost"]) / ref["final_cost"]
        row["speedup_over_pycolmap"] = ref["seconds"] / row["seconds"]
    payload = {"machine": machine("cuda" if torch.cuda.is_available() else "cpu"), "settings": asdict(s),
               "rows": rows}
    write_results(out_dir, name, payload, markdown(payload), figure(rows))
    return payload


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"# Bundle adjustment: sparsa vs pycolmap (Ceres) vs scipy ({m['date']}, {m['cpu']}, {m['cores']} cores"
             + (f", {m['gpu']}" if "gpu" in m else "") + ")", "",
             "| cameras | points | observations | solver | device | initial cost | final cost | rel. to pycolmap "
             "| iterations | seconds | x pycolmap | rmse px | peak RSS MiB | solve growth MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['cameras']} | {r['points']} | {r['observations']} | {r['solver']} | {r['device']} | "
                     f"{r['initial_cost']:.6e} | {r['final_cost']:.10e} | {r['cost_rel_to_pycolmap']:+.1e} | "
                     f"{r['iterations']} | {r['seconds']:.3f} | {r['speedup_over_pycolmap']:.2f} | "
                     f"{r['rmse_px']:.4f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['rss_growth_bytes'] / 2**20:.0f} |")
    lines += ["", "Seconds: the median of the solves (reading the scene excluded). Peak RSS: the solver "
              "process's resident high-water mark during the solves (VmHWM reset after loading; Python, torch "
              "and the scene included); solve growth: how far the solves raised it above the resident size "
              "after loading."]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = sorted({(r["cameras"], r["points"]) for r in rows})
    fig, axes = plt.subplots(1, len(scenes), figsize=(5 * len(scenes), 4), squeeze=False)
    for ax, (c, p) in zip(axes[0], scenes):
        for r in (r for r in rows if r["cameras"] == c):
            label = f"{r['solver']} ({r['device']})"
            if r["solver"] == "sparsa":  # our iteration log: cost after each iteration
                t, cost = zip(*r["log"])
                ax.plot([max(x, 1e-3) for x in t], cost, marker="o", label=label)
            else:  # peers report the end only: one marker at the median time
                ax.plot([r["seconds"]], [r["final_cost"]], marker="s", linestyle="none", markersize=9, label=label)
        ax.set(xscale="log", yscale="log", xlabel="seconds", ylabel="cost 1/2 sum |r|^2",
               title=f"{c} cameras, {p} points")
        ax.legend()
    fig.tight_layout()
    return fig
