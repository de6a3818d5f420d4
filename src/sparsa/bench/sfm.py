"""``sparsa bench sfm``: global SfM from a COLMAP database, ours against ``pycolmap.global_mapping``
(COLMAP 4's global mapper, formerly GLOMAP) on the same databases, scored against the ground truth.

Scenes come from :mod:`sparsa.bench.sfm_scenes` (cached under ``$SPARSA_CACHE/sfm-scenes``: COLMAP's
RANSAC over a 1000-image scene takes minutes). Each mapper runs in its own spawned process on its
own copy of the database, with the same thread count and the same stopping rules (GP: 100
iterations or a 1e-5 function tolerance; each BA: 200 iterations or 1e-5). Each timer covers
reading the database, mapping and writing the model; the process's peak resident memory is its
own (VmHWM reset after imports). Accuracy is computed here, by the same code for both, from the
models they wrote (:mod:`sparsa.bench.sfm_metrics`).
"""

import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparsa.bench.ba import peak_rss_bytes, reset_peak_rss, run_isolated
from sparsa.bench.results import machine, write_results
from sparsa.bench.sfm_scenes import SfmSceneSpec, write_database, write_pixel_database


@dataclass(frozen=True)
class SfmBenchSettings:
    """sizes: images per ring scene; pixel_images: images of the scene rendered and matched from
    pixels (0: none); threads: 0 for every core."""

    sizes: tuple[int, ...] = (50, 200, 1000)
    pixel_images: int = 30
    seed: int = 0
    threads: int = 0

    @classmethod
    def quick(cls) -> "SfmBenchSettings":
        return cls(sizes=(50,), pixel_images=0)


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSA_CACHE", Path.home() / ".cache" / "sparsa")) / "sfm-scenes"


def cached(key: str, make) -> tuple[Path, Path, float]:
    """(database, ground-truth model, seconds it took to make) of the scene ``key``, from the cache or
    made now by ``make(directory)``."""
    directory = cache_dir() / key
    done = directory / "made-in-seconds"
    if not done.is_file():
        shutil.rmtree(directory, ignore_errors=True)
        start = time.perf_counter()
        make(directory)
        done.write_text(f"{time.perf_counter() - start:.3f}\n")
    return directory / "database.db", directory / "truth", float(done.read_text())


def scenes(s: SfmBenchSettings):
    """(kind, images, description, make database) of every scene of the run."""
    out = [("ring", n, asdict(SfmSceneSpec(n, seed=s.seed)),
            lambda spec=SfmSceneSpec(n, seed=s.seed): cached(spec.key, lambda d: write_database(spec, d)))
           for n in s.sizes]
    if s.pixel_images:
        key = f"pixels-v1-images={s.pixel_images}-seed={s.seed}"
        out.append(("pixels", s.pixel_images, {"images": s.pixel_images, "seed": s.seed},
                    lambda: cached(key, lambda d: write_pixel_database(s.pixel_images, s.seed, d))))
    return out


def run_ours(database: str, out: str, threads: int, device: str) -> dict:
    """``sparsa sfm DATABASE -o OUT`` in this (fresh) process: its report, seconds and peak memory."""
    from sparsa.sfm.config import MAPPER_BA_OPTIONS, MAPPER_GP_OPTIONS, GlobalMapperOptions
    from sparsa.sfm.problems import map_database_problem

    if threads:
        torch.set_num_threads(threads)
    reset_peak_rss()
    start = time.perf_counter()
    report = map_database_problem(database, GlobalMapperOptions(), MAPPER_GP_OPTIONS, MAPPER_BA_OPTIONS, out=out,
                                  device=device, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "stages": report["stages"],
            "observations": report["observations"], "points": report["points"], "rmse_px": report["rmse_px"],
            "gpu_peak_bytes": report["peak_memory_bytes"] if device.startswith("cuda") else None}


def run_pycolmap(database: str, out: str, threads: int) -> dict:
    """``pycolmap.global_mapping`` in this (fresh) process; its largest model is copied to ``out``."""
    import pycolmap

    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = threads or -1
    options.random_seed = 0
    work = Path(out).with_name("pycolmap-work")
    work.mkdir()
    reset_peak_rss()
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)  # COLMAP logs its stages' times to stderr
        try:
            start = time.perf_counter()
            models = pycolmap.global_mapping(database, str(work), str(work), options)
            seconds = time.perf_counter() - start
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        stages = [{"stage": m.group(1), "seconds": float(m.group(2))}
                  for m in re.finditer(r"\] (.+?) done in ([0-9.]+) seconds", log.read())]
    if not models:
        return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "failed": "no model", "stages": stages}
    best = max(models.values(), key=lambda m: m.num_reg_images())
    Path(out).mkdir()
    best.write(out)
    return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "observations": best.compute_num_observations(),
            "points": best.num_points3D(), "rmse_px": best.compute_mean_reprojection_error(), "stages": stages}


def score(row: dict, out: str, truth: Path) -> None:
    from sparsa.bench.sfm_metrics import accuracy
    from sparsa.data.colmap import read_colmap

    if "failed" not in row:
        row.update(accuracy(read_colmap(out), read_colmap(truth)))


def run_sfm_bench(s: SfmBenchSettings, *, out_dir: str, name: str = "sfm", progress: bool = True) -> dict:
    """Both mappers on every scene; write ``<name>.{json,md,png}``; return the payload."""
    from tqdm.auto import tqdm

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    todo = scenes(s)
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(todo) * (len(devices) + 2), desc="bench sfm",
                                                     disable=not progress) as bar:
        for kind, images, description, make in todo:
            database, truth, made = make()
            bar.update(1)
            scene = {"kind": kind, "images_truth": images, "scene": description, "scene_seconds": made}
            for solver, device in [("sparsa", d) for d in devices] + [("pycolmap", "cpu")]:
                work = Path(tmp) / f"{kind}-{images}-{solver}-{device}"
                work.mkdir()
                copy = work / "database.db"
                shutil.copy(database, copy)  # every mapper reads its own copy: nothing it writes reaches the other
                out = str(work / "model")
                if solver == "sparsa":
                    row = run_isolated(run_ours, str(copy), out, s.threads, device)
                else:
                    row = run_isolated(run_pycolmap, str(copy), out, s.threads)
                row = {"solver": solver, "device": device, **scene, **row}
                score(row, out, truth)
                rows.append(row)
                bar.update(1)
    for row in rows:
        peer = next(r for r in rows if (r["kind"], r["images_truth"]) == (row["kind"], row["images_truth"])
                    and r["solver"] == "pycolmap")
        row["speedup_over_pycolmap"] = peer["seconds"] / row["seconds"]
    payload = {"machine": machine(devices[-1]), "settings": asdict(s),
               "timer": "reading the database, mapping and writing the model, each mapper in its own process",
               "rows": rows}
    write_results(out_dir, name, payload, markdown(payload), figure(rows))
    return payload


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"# Global SfM from a database: sparsa vs pycolmap.global_mapping ({m['date']}, {m['cpu']}, "
             f"{m['cores']} cores" + (f", {m['gpu']}" if "gpu" in m else "") + ")", "",
             "ring: synthetic ring scenes (sparsa.bench.sfm_scenes): 1 px keypoint noise, 30% outlier matches, two-view "
             "geometries by COLMAP's RANSAC. pixels: synthesize_dataset's scene rendered to images, COLMAP's SIFT and "
             "exhaustive matching. Same stopping rules (GP 100 iterations / 1e-5, BA 200 / 1e-5), same "
             "threads; each timer covers reading, mapping and writing.", "",
             "| scene | images | mapper | device | registered | rotation error ° (median / P90) | centre error (median / P90) "
             "| AUC @1° / 3° / 5° | seconds | x pycolmap | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if "failed" in r:
            lines.append(f"| {r['kind']} | {r['images_truth']} | {r['solver']} | {r['device']} | failed: {r['failed']} | | | | "
                         f"{r['seconds']:.2f} | | {r['peak_rss_bytes'] / 2**20:.0f} |")
            continue
        rot, cen, auc = r["rotation_error_deg"], r["centre_error"], r["auc"]
        lines.append(f"| {r['kind']} | {r['images_truth']} | {r['solver']} | {r['device']} | {r['images']} | {rot['median']:.3f} / "
                     f"{rot['p90']:.3f} | {cen['median']:.4f} / {cen['p90']:.4f} | {auc['1']:.3f} / {auc['3']:.3f} / "
                     f"{auc['5']:.3f} | {r['seconds']:.2f} | {r['speedup_over_pycolmap']:.2f} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} |")
    for solver, note in (("sparsa", ""), ("pycolmap", " (from its log)")):
        mine = [r for r in payload["rows"] if r["solver"] == solver and r.get("stages")]
        if mine:
            names = [s["stage"] for s in mine[0]["stages"]]
            lines += ["", f"{solver}'s seconds per stage{note}:", "", "| scene | images | device | " + " | ".join(names)
                      + " |", "|---|---|---|" + "---|" * len(names)]
            for r in mine:
                lines.append(f"| {r['kind']} | {r['images_truth']} | {r['device']} | "
                             + " | ".join(f"{s['seconds']:.2f}" for s in r["stages"]) + " |")
    lines += ["", "Centre error: ground-truth units after the best similarity (the ring's images are one unit "
              "apart). AUC: relative pose error (the larger of the rotation and translation-direction errors) over "
              "every image pair, unregistered images counting as failures."]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (solver, device), marker in zip(sorted({(r["solver"], r["device"]) for r in rows}), "os^v"):
        mine = sorted((r for r in rows if (r["solver"], r["device"]) == (solver, device) and "failed" not in r
                       and r["kind"] == "ring"), key=lambda r: r["images_truth"])
        for ax, key in zip(axes, ("rotation_error_deg", "centre_error")):
            ax.plot([r["seconds"] for r in mine], [r[key]["median"] for r in mine], marker + "-",
                    label=f"{solver} ({device})")
            for r in mine:
                ax.annotate(f"{r['kind']} {r['images_truth']}", (r["seconds"], r[key]["median"]), fontsize=8)
    axes[0].set(xscale="log", xlabel="seconds", ylabel="median rotation error (deg)")
    axes[1].set(xscale="log", xlabel="seconds", ylabel="median camera centre error")
    for ax in axes:
        ax.legend()
    fig.suptitle("error against time (labels: images)")
    fig.tight_layout()
    return fig
