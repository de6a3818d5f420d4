"""``sparsa ba``: bundle adjustment of a BAL file, a COLMAP model or a synthetic scene; under
``torchrun --nproc-per-node N -m sparsa ba ...`` the points are split across the N processes."""

from dataclasses import replace

from sparsa.cli._common import DEVICE_HELP, number
from sparsa.errors import SparsaError

TOLERANCE = number(float, 0)  # a finite number >= 0


def ba_options(args):
    from sparsa.sfm.config import BAOptions

    fixed = tuple(int(i) for i in args.fix_images.split(",") if i.strip()) if args.fix_images else ()
    return BAOptions(max_iterations=args.max_iters, loss=args.loss, loss_scale=args.loss_scale,
                     linear_solver=args.linear_solver, function_tolerance=args.function_tolerance,
                     gradient_tolerance=args.gradient_tolerance, parameter_tolerance=args.parameter_tolerance,
                     refine_focal_length=not args.fix_focal_length, refine_extra_params=not args.fix_distortion,
                     refine_principal_point=args.refine_principal_point, fixed_images=fixed,
                     refine_points=not args.fix_points)


def cmd_ba(args) -> dict:
    from sparsa.cli._common import check_device
    from sparsa.sfm.problems import adjust_problem

    check_device(args.device)
    if args.fix_images and not all(i.strip().isdigit() for i in args.fix_images.split(",")):
        raise SparsaError(f"--fix-images {args.fix_images!r}: expected comma-separated image indices")
    return adjust_problem(args.problem, ba_options(args), out=args.out, text=args.text, force=args.force,
                          device=args.device, threads=args.threads, progress=not args.quiet, log=args.log,
                          report=not args.json)


def ba_table(r: dict) -> str:
    lines = [r["report"], f"{r['problem']}: {r['images']} images, {r['points']} points, {r['observations']} "
             f"observations; {r['linear_solver']} on {r['device']} x {r['processes']} process(es)"]
    f = r["filtered"]
    if f["observations_dropped"]:
        lines.append(f"dropped before solving: {f['behind_camera']} observations behind their camera, "
                     f"{f['observations_dropped']} observations and {f['points_dropped']} points in all "
                     "(tracks need two views)")
    if "out" in r:
        lines.append(f"wrote {r['out']}")
    return "\n".join(lines)


def add_output_flags(p) -> None:
    p.add_argument("--threads", type=number(int, 1), help="CPU threads, at least 1 (default: torch's)")
    p.add_argument("-o", "--out", help="write the result: a new BAL file (.txt/.bz2), a COLMAP model directory "
                                       "(created, or replaced when sparsa wrote it), or the input COLMAP model "
                                       "itself (refined in place: only its model files change; default: no output)")
    p.add_argument("--force", action="store_true",
                   help="replace -o even when it is a file or holds files sparsa did not write (default: refuse)")
    p.add_argument("--text", action="store_true", help="COLMAP output in text instead of binary")


def add_solver_flags(p, d, per: str, iterations_note: str = "") -> None:
    """``--loss``, ``--loss-scale`` and ``--max-iters`` with the defaults of BA options ``d`` (``per``: what
    the iterations are counted over, e.g. " per BA round"; ``iterations_note``: added to the default in the help)."""
    from sparsa.sfm.config import LOSSES

    p.add_argument("--loss", choices=LOSSES, default=d.loss, help=f"BA robust loss (default {d.loss})")
    p.add_argument("--loss-scale", type=number(float, 0, low_open=True), default=d.loss_scale,
                   help=f"BA robust loss scale (default {d.loss_scale:g} px)")
    p.add_argument("--max-iters", type=number(int, 0), default=d.max_iterations,
                   help=f"LM iterations{per}, accepted and rejected steps (default {d.max_iterations} iterations"
                        + iterations_note + ")")


def add_ba(sub, common) -> None:
    from sparsa.sfm.config import LINEAR_SOLVERS, BAOptions

    d = BAOptions()
    p = sub.add_parser("ba", parents=[common], help="bundle adjustment (Levenberg-Marquardt, Schur complement)")
    p.add_argument("problem", help="a BAL file (.txt/.bz2), a COLMAP model directory, or "
                                   "synthetic:cameras=C,points=P,seed=S[,model=M,track=T,noise=PX,outliers=F]")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    add_solver_flags(p, d, "")
    p.add_argument("--linear-solver", choices=LINEAR_SOLVERS, default=d.linear_solver,
                   help=f"reduced camera system: dense Cholesky, PCG, or auto (dense up to "
                        f"{d.dense_schur_max_size} camera unknowns; default {d.linear_solver})")
    p.add_argument("--function-tolerance", type=TOLERANCE, default=d.function_tolerance,
                   help=f"stop when a step changes the cost by less than this share (default {d.function_tolerance:g})")
    p.add_argument("--gradient-tolerance", type=TOLERANCE, default=d.gradient_tolerance,
                   help=f"stop when the largest gradient entry is below this (default {d.gradient_tolerance:g})")
    p.add_argument("--parameter-tolerance", type=TOLERANCE, default=d.parameter_tolerance,
                   help=f"stop when |step| <= tol * (|x| + tol) (default {d.parameter_tolerance:g})")
    p.add_argument("--fix-images", help="comma-separated image indices whose poses stay fixed")
    p.add_argument("--fix-points", action="store_true", help="keep 3D points fixed (motion-only BA)")
    p.add_argument("--fix-focal-length", action="store_true", help="keep focal lengths fixed (default: refined)")
    p.add_argument("--fix-distortion", action="store_true",
                   help="keep distortion parameters fixed (default: refined)")
    p.add_argument("--refine-principal-point", action="store_true",
                   help="also refine principal points (default: fixed, as in COLMAP)")
    add_output_flags(p)
    p.add_argument("--log", action="store_true", help="include the per-iteration log in --json output")
    p.set_defaults(run=cmd_ba, table=ba_table)


def cmd_sfm(args) -> dict:
    from pathlib import Path

    from sparsa.cli._common import check_device
    from sparsa.sfm.config import MAPPER_BA_OPTIONS, MAPPER_GP_OPTIONS, SFM_BA_OPTIONS, GlobalMapperOptions, GPOptions
    from sparsa.sfm.problems import map_database_problem, reconstruct_problem

    check_device(args.device)
    database = Path(args.problem).suffix == ".db"
    ba, gp = (MAPPER_BA_OPTIONS, MAPPER_GP_OPTIONS) if database else (SFM_BA_OPTIONS, GPOptions())
    ba_options = replace(ba, max_iterations=ba.max_iterations if args.max_iters is None else args.max_iters,
                         loss=args.loss, loss_scale=args.loss_scale, refine_focal_length=not args.fix_intrinsics,
                         refine_extra_params=not args.fix_intrinsics)
    gp_options = replace(gp, max_iterations=args.gp_max_iters, seed=args.seed)
    common = dict(filter_px=args.filter_px, out=args.out, text=args.text, force=args.force, device=args.device,
                  threads=args.threads, progress=not args.quiet)
    if database:
        options = GlobalMapperOptions(min_inliers=args.min_inliers, max_tracks=args.max_tracks,
                                      max_rotation_error_deg=args.max_rotation_error)
        return map_database_problem(args.problem, options, gp_options, ba_options, **common)
    return reconstruct_problem(args.problem, gp_options, ba_options, **common)


def database_table(r: dict) -> str:
    lines = []
    for s in r["stages"]:
        counts = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                           for k, v in s.items() if k not in ("stage", "seconds"))
        lines.append(f"{s['stage']:<24} {s['seconds']:8.2f} s  {counts}")
    lines.append(f"{r['images']} of {r['images_in_database']} images registered ({r['images_left_out']} left out), "
                 f"{r['points']} points, {r['observations']} observations, rmse {r['rmse_px']:.3f} px, "
                 f"{r['seconds']:.2f} s, peak memory {r['peak_memory_bytes'] / 2**20:.0f} MiB")
    if "out" in r:
        lines.append(f"wrote {r['out']}")
    return "\n".join(lines)


def sfm_table(r: dict) -> str:
    if "stages" in r:
        return database_table(r)
    gp = r["gp"]
    lines = [f"global positioning: {gp['iterations']} iterations, cost {gp['initial_cost']:.4e} -> "
             f"{gp['final_cost']:.4e}, {gp['seconds']:.2f} s ({gp['termination']})"]
    for i, (b, f) in enumerate(zip(r["ba"], r["filtered"])):
        lines.append(f"BA round {i + 1}: {b['iterations']} iterations, rmse {b['initial_rmse']:.3f} -> "
                     f"{b['final_rmse']:.3f} px, {b['seconds']:.2f} s; then dropped {f['observations_dropped']} "
                     f"observations and {f['points_dropped']} points above {f['threshold_px']:g} px")
    c = r["centre_error"]
    lines.append(f"{r['images']} images, {r['points']} points, {r['observations']} observations, rmse "
                 f"{r['rmse_px']:.3f} px, {r['seconds']:.2f} s; camera centres vs {c['reference']} after a "
                 f"similarity: median {c['median']:.4g}, max {c['max']:.4g}")
    if "out" in r:
        lines.append(f"wrote {r['out']}")
    return "\n".join(lines)


def add_sfm(sub, common) -> None:
    from sparsa.sfm.config import SFM_BA_OPTIONS, SFM_FILTER_PX, GlobalMapperOptions, GPOptions

    d, m = GPOptions(), GlobalMapperOptions()
    p = sub.add_parser("sfm", parents=[common], help="global SfM from a COLMAP database, or positioning + BA from "
                                                     "known rotations")
    p.add_argument("problem", help="a COLMAP database (DATABASE.db: relative poses, rotation averaging, tracks, "
                                   "positioning, BA, retriangulation), or a COLMAP model directory (its rotations, "
                                   "intrinsics and observations are used; its positions are recomputed), a BAL file "
                                   "or synthetic:cameras=C,points=P,seed=S")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--gp-max-iters", type=number(int, 0), default=d.max_iterations,
                   help=f"global positioning LM iterations (default {d.max_iterations} iterations)")
    add_solver_flags(p, SFM_BA_OPTIONS, " per BA round", "; 200 from a database")
    p.set_defaults(max_iters=None)  # per mode: 100 from a model, 200 (COLMAP's global mapper's) from a database
    p.add_argument("--filter-px", type=number(float, 0, low_open=True), default=SFM_FILTER_PX,
                   help="after BA rounds 1-3 drop observations above 3x, 2x, 1x this error (default %(default)g px)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random GP start (default %(default)s)")
    p.add_argument("--fix-intrinsics", action="store_true",
                   help="keep focal lengths and distortion as given (default: refined in the last BA round)")
    p.add_argument("--min-inliers", type=number(int, 5), default=m.min_inliers,
                   help="database mode: pairs need this many verified inliers (default %(default)s)")
    p.add_argument("--max-rotation-error", type=number(float, 0, low_open=True), default=m.max_rotation_error_deg,
                   help="database mode: drop pairs this far from the averaged rotations (default %(default)g deg)")
    p.add_argument("--max-tracks", type=number(int, 1), default=None,
                   help="database mode: keep at most this many tracks, the longest (default: all)")
    add_output_flags(p)
    p.set_defaults(run=cmd_sfm, table=sfm_table)
