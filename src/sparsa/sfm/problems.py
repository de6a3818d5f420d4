"""What ``sparsa ba`` and ``sparsa sfm`` run, one call each: a problem spec in (a BAL file, a COLMAP
model or ``synthetic:...``), the solve, the result written where asked, and the report as the
commands print it (``--json`` fields).

The output path is checked before any solve (nothing is written on a bad path). Under
``torchrun`` :func:`adjust_problem` splits the points across the processes, and only rank 0
reports and writes (the others return None).
"""

import torch

from sparsa.errors import SparsaError
from sparsa.sfm.align import centre_errors
from sparsa.data.colmap_db import read_database
from sparsa.sfm.config import SFM_FILTER_PX, BAOptions, GlobalMapperOptions, GPOptions
from sparsa.sfm.distributed import init_comm, solve_ba_distributed
from sparsa.sfm.filters import drop_unusable, keep_observations
from sparsa.sfm.global_mapper import map_database
from sparsa.sfm.pipeline import run_sfm
from sparsa.sfm.scenes import check_scene_output, load_scene, save_scene


def adjust_problem(problem: str, options: BAOptions, *, out: str | None = None, text: bool = False,
                   force: bool = False, device: str = "cpu", threads: int | None = None, progress: bool = True,
                   log: bool = False, report: bool = False) -> dict | None:
    """Bundle-adjust ``problem``; write the result to ``out`` (a BAL file, a COLMAP directory, or the
    input model in place; ``text``: COLMAP text). ``log``: the per-iteration log in the summary;
    ``report``: the solver's full text report under ``"report"``."""
    torch.set_num_threads(threads or torch.get_num_threads())
    scene, _ = load_scene(problem)
    if out:
        check_scene_output(out, source=problem, text=text, force=force)
    scene, filtered = drop_unusable(scene)
    comm = init_comm(device)
    result, summary = solve_ba_distributed(scene, options, device=device, progress=progress, comm=comm)
    comm.close()
    if comm.rank != 0:  # rank 0 reports and writes
        return None
    answer = {"problem": problem, "initial_cost": summary.initial_cost, "final_cost": summary.final_cost,
              "iterations": summary.iterations, "seconds": summary.seconds, "rmse_px": summary.final_rmse,
              "initial_rmse_px": summary.initial_rmse, "termination": summary.termination,
              "message": summary.message, "linear_solver": summary.linear_solver_used, "device": device,
              "cameras": scene.n_cameras, "images": scene.n_images, "points": scene.n_points,
              "observations": scene.n_observations, "processes": comm.world_size, "filtered": filtered,
              "summary": summary.to_dict(log=log)}
    if out:
        answer["out"] = save_scene(result, out, source=problem, text=text, force=force)
    if report:
        answer["report"] = summary.full()
    return answer


def reconstruct_problem(problem: str, gp_options: GPOptions, ba_options: BAOptions, *,
                        filter_px: float = SFM_FILTER_PX, out: str | None = None, text: bool = False,
                        force: bool = False, device: str = "cpu", threads: int | None = None,
                        progress: bool = True) -> dict:
    """Global positioning then BA rounds with filtering (:func:`~sparsa.sfm.pipeline.run_sfm`) on
    ``problem``'s rotations, intrinsics and observations; camera centres compared, after a
    similarity, with the ground truth (synthetic scenes) or the input poses."""
    torch.set_num_threads(threads or torch.get_num_threads())
    scene, truth = load_scene(problem)
    if out:
        check_scene_output(out, source=problem, text=text, force=force)
    scene, short_tracks = keep_observations(scene, torch.ones(scene.n_observations, dtype=torch.bool))
    if len(torch.unique(scene.obs_image)) < scene.n_images:
        raise SparsaError(f"{problem}: an image sees no point with a track of two or more views")
    result, report = run_sfm(scene, gp_options, ba_options, filter_px=filter_px, device=device, progress=progress)
    errors = centre_errors(result, truth if truth is not None else scene)
    answer = {"problem": problem, "images": scene.n_images, "points": result.n_points,
              "observations": result.n_observations, "rmse_px": report.ba[-1].final_rmse,
              "seconds": report.gp.seconds + sum(b.seconds for b in report.ba),
              "centre_error": {"reference": "ground truth" if truth is not None else "input poses",
                               "median": float(errors.median()), "max": float(errors.max())},
              "gp": report.gp.to_dict(), "ba": [b.to_dict() for b in report.ba], "filtered": report.filtered,
              "short_tracks": short_tracks}
    if out:
        answer["out"] = save_scene(result, out, source=problem, text=text, force=force)
    return answer


def map_database_problem(database: str, options: GlobalMapperOptions, gp_options: GPOptions, ba_options: BAOptions, *,
                         filter_px: float = SFM_FILTER_PX, out: str | None = None, text: bool = False,
                         force: bool = False, device: str = "cpu", threads: int | None = None,
                         progress: bool = True) -> dict:
    """Global SfM from a COLMAP database (:func:`~sparsa.sfm.global_mapper.map_database`); the model
    is written to ``out`` (a new or sparsa-written COLMAP model directory) only when the run succeeds."""
    torch.set_num_threads(threads or torch.get_num_threads())
    if out:
        check_scene_output(out, text=text, force=force)
    db = read_database(database)
    scene, report = map_database(db, options, gp_options, ba_options, filter_px=filter_px, device=device,
                                 progress=progress)
    answer = {"database": database, "device": device, **report}
    if out:
        answer["out"] = save_scene(scene, out, text=text, force=force)
    return answer
