"""Point-partitioned BA over gloo equals the one-process solve."""

import json
import os
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from sparsa.sfm import BAOptions, solve_ba
from sparsa.sfm.distributed import partition, point_ranges

SPEC = "synthetic:cameras=8,points=300,seed=11"
OPTIONS = dict(function_tolerance=1e-12, parameter_tolerance=1e-14)


def worker(rank: int, world: int, init_file: str, solver: str, out: str):
    import torch.distributed as dist

    from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
    from sparsa.sfm.cameras import project
    from sparsa.sfm.comm import TorchComm
    from sparsa.sfm.distributed import solve_ba_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    scene, _ = synthetic_scene(SyntheticSpec.parse(SPEC), project)
    result, summary = solve_ba_distributed(scene, BAOptions(linear_solver=solver, **OPTIONS), comm=TorchComm())
    if rank == 0:
        torch.save({"cost": summary.final_cost, "iterations": summary.iterations, "points": result.points,
                    "t": result.translations}, out)
    dist.destroy_process_group()


def test_point_ranges_cover_every_point_once(scene_factory):
    scene, _ = scene_factory(SPEC)
    ranges = point_ranges(scene, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == scene.n_points
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    parts = [partition(scene, lo, hi) for lo, hi in ranges]
    assert sum(p.n_observations for p in parts) == scene.n_observations
    assert max(p.n_observations for p in parts) < 0.5 * scene.n_observations


def test_two_process_gloo_equals_one_process(tmp_path, scene_factory):
    scene, _ = scene_factory(SPEC)
    for solver in ("dense_schur", "iterative_schur"):
        single, summary = solve_ba(scene, BAOptions(linear_solver=solver, **OPTIONS))
        out = tmp_path / f"{solver}.pt"
        mp.spawn(worker, args=(2, str(tmp_path / f"init-{solver}"), solver, str(out)), nprocs=2)
        got = torch.load(out)
        assert abs(got["cost"] - summary.final_cost) <= 1e-8 * summary.final_cost, solver
        assert got["iterations"] == summary.iterations
        torch.testing.assert_close(got["points"], single.points, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["t"], single.translations, rtol=0, atol=1e-6)


def test_torchrun_two_processes_reports_the_one_process_cost():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["ba", "synthetic:cameras=6,points=120,seed=2", "--json", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "sparsa", *cmd], capture_output=True, text=True, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "-m", "sparsa", *cmd], capture_output=True, text=True, env=env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    a, b = json.loads(one.stdout.splitlines()[-1]), json.loads(lines[0])
    assert b["processes"] == 2 and a["processes"] == 1
    assert abs(a["final_cost"] - b["final_cost"]) <= 1e-8 * a["final_cost"]
