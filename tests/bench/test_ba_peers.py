"""BA peers: pycolmap (Ceres) and scipy reach the same minimum of our cost on small synthetic scenes."""

import inspect
import sys

import numpy as np
import pytest
import torch

from sparsa.bench.ba_peers import (ba_cost, colmap_options, from_reconstruction, jac_sparsity, pack,
                                   rho_over_s, run_pycolmap, run_scipy, to_reconstruction, unpack)
from sparsa.data.rotations import angle_axis_to_quaternion
from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
from sparsa.errors import SparsaError
from sparsa.sfm.cameras import MODELS, project
from sparsa.sfm.ba import scene_residuals

TIGHT = dict(function_tolerance=1e-16, gradient_tolerance=1e-16, parameter_tolerance=1e-16)


def scene_of(model: str, cameras: int = 6, points: int = 150):
    return synthetic_scene(SyntheticSpec.parse(f"cameras={cameras},points={points},seed=0,model={model}"), project)[0]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module", params=["SIMPLE_RADIAL", "PINHOLE", "RADIAL"])
def runs(request):
    pytest.importorskip("pycolmap")
    scene = scene_of(request.param)
    return scene, run_pycolmap(scene, **TIGHT), run_scipy(scene)


def test_run_pycolmap_and_run_scipy_small_scene_reach_the_same_final_cost(runs):
    scene, colmap, scipy_run = runs
    assert colmap.termination.startswith("CONVERGENCE") and scipy_run.termination.startswith("status 2")
    assert rel(scipy_run.final_cost, colmap.final_cost) < 1e-6
    assert rel(scipy_run.initial_cost, colmap.initial_cost) < 1e-12
    for run in (colmap, scipy_run):
        assert run.final_cost < 0.02 * run.initial_cost
        assert 0.4 < run.rmse_px < 0.6  # the synthetic pixel noise is 0.5 px
        assert run.iterations > 0 and run.seconds > 0


def test_peer_runs_small_scene_reported_costs_equal_our_recomputed_costs(runs):
    _, colmap, scipy_run = runs
    for run in (colmap, scipy_run):
        assert rel(run.recomputed_initial_cost, run.initial_cost) < 1e-9
        assert rel(run.recomputed_final_cost, run.final_cost) < 1e-9


def test_peer_runs_small_scene_keep_principal_points_and_layout(runs):
    scene, colmap, scipy_run = runs
    principal = list(MODELS[scene.model].principal)
    for run in (colmap, scipy_run):
        out = run.scene
        assert torch.equal(out.intrinsics[:, principal], scene.intrinsics[:, principal])
        assert not torch.equal(out.intrinsics, scene.intrinsics)  # focal lengths moved
        assert out.rotation_format == "angle_axis" and out.rotations.shape == scene.rotations.shape
        assert out.points.shape == scene.points.shape and out.obs_point is scene.obs_point


def test_peer_runs_quaternion_scene_with_huber_loss_reach_the_same_final_cost():
    pytest.importorskip("pycolmap")
    scene = synthetic_scene(SyntheticSpec.parse("cameras=6,points=150,seed=0,outliers=0.02"), project)[0]
    quat = scene.replace(rotations=angle_axis_to_quaternion(scene.rotations), rotation_format="quaternion")
    colmap = run_pycolmap(quat, loss="huber", loss_scale=2.0, **TIGHT)
    scipy_run = run_scipy(quat, loss="huber", f_scale=2.0)
    assert colmap.scene.rotation_format == scipy_run.scene.rotation_format == "quaternion"
    assert rel(colmap.recomputed_initial_cost, colmap.initial_cost) < 1e-9
    assert rel(colmap.recomputed_final_cost, colmap.final_cost) < 1e-9
    assert rel(scipy_run.final_cost, colmap.final_cost) < 1e-6
    assert colmap.termination.startswith("CONVERGENCE")
    assert colmap.final_cost < 0.7 * ba_cost(scene, "huber", 2.0)[0]  # outliers keep a linear share of the cost


def test_run_pycolmap_same_solution_as_pycolmap_bundle_adjustment_bit_for_bit():
    pycolmap = pytest.importorskip("pycolmap")
    scene = scene_of("SIMPLE_RADIAL", cameras=4, points=60)
    ours = run_pycolmap(scene, max_iterations=20)
    rec, point_ids = to_reconstruction(scene, pycolmap)
    pycolmap.bundle_adjustment(rec, colmap_options(pycolmap, max_iterations=20, function_tolerance=0.0,
                                                   gradient_tolerance=1e-4, parameter_tolerance=0.0, threads=-1,
                                                   loss="trivial", loss_scale=1.0))
    theirs = from_reconstruction(rec, scene, point_ids)
    for name in ("rotations", "translations", "intrinsics", "points"):
        assert torch.equal(getattr(ours.scene, name), getattr(theirs, name)), name


def test_run_pycolmap_defaults_equal_colmap_bundle_adjustment_options():
    pycolmap = pytest.importorskip("pycolmap")
    options = pycolmap.BundleAdjustmentOptions()
    solver = options.ceres.solver_options
    defaults = {k: p.default for k, p in inspect.signature(run_pycolmap).parameters.items() if k != "scene"}
    assert defaults == dict(
        max_iterations=solver.max_num_iterations, function_tolerance=solver.function_tolerance,
        gradient_tolerance=solver.gradient_tolerance, parameter_tolerance=solver.parameter_tolerance,
        threads=solver.num_threads, loss="trivial", loss_scale=options.ceres.loss_function_scale)
    assert not options.refine_principal_point and options.refine_focal_length and options.refine_extra_params


def test_run_pycolmap_without_pycolmap_raises_sparsa_error_naming_the_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycolmap", None)
    with pytest.raises(SparsaError, match=r"pycolmap==4\.2\.1"):
        run_pycolmap(scene_of("PINHOLE", cameras=3, points=20))


def test_run_scipy_quaternion_scene_converges_keeping_principal_points_and_format():
    scene = scene_of("PINHOLE", cameras=4, points=60)
    scene = scene.replace(rotations=angle_axis_to_quaternion(scene.rotations), rotation_format="quaternion")
    run = run_scipy(scene)
    assert run.termination.startswith("status 2") and run.final_cost < 0.02 * run.initial_cost
    assert rel(run.recomputed_final_cost, run.final_cost) < 1e-9
    assert run.scene.rotation_format == "quaternion" and run.scene.rotations.shape == scene.rotations.shape
    assert torch.equal(run.scene.intrinsics[:, 2:], scene.intrinsics[:, 2:])


def test_run_scipy_unknown_loss_raises_sparsa_error():
    with pytest.raises(SparsaError, match="loss 'arctan' unknown"):
        run_scipy(scene_of("PINHOLE", cameras=3, points=20), loss="arctan")


@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "OPENCV"])
def test_jac_sparsity_tiny_scene_equals_autograd_jacobian_pattern(model):
    scene = scene_of(model, cameras=3, points=12)
    J = torch.autograd.functional.jacobian(lambda x: scene_residuals(unpack(x, scene)).flatten(), pack(scene)).numpy() != 0
    pattern = jac_sparsity(scene).toarray() != 0
    assert not (J & ~pattern).any()
    per_observation = J[0::2] | J[1::2]  # a pinhole's x row is structurally blind to t_y, its y row to t_x
    assert np.array_equal(np.repeat(per_observation, 2, axis=0), pattern)


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "cauchy"])
def test_rho_over_s_matches_ceres_loss_formulas(loss):
    a, b = 2.0, 4.0
    s = torch.tensor([0.0, 1e-300, 0.5, 4.0, 9.0, 1e6], dtype=torch.float64)
    expected = {"huber": torch.where(s <= b, s, 2 * a * s.sqrt() - b),
                "soft_l1": 2 * b * (torch.sqrt(1 + s / b) - 1),
                "cauchy": b * torch.log1p(s / b)}[loss]
    ratio = rho_over_s(s, loss, a)
    assert ratio[0] == 1 and torch.isfinite(ratio).all()
    torch.testing.assert_close(s * ratio, expected, rtol=1e-12, atol=1e-300)


def test_run_scipy_logs_the_cost_after_every_iteration_from_the_start():
    scene = scene_of("PINHOLE", cameras=4, points=60)
    run = run_scipy(scene)
    times, costs = zip(*run.log)
    assert len(run.log) == run.iterations + 1 and costs[0] == pytest.approx(run.initial_cost, rel=1e-12)
    assert costs[-1] == pytest.approx(run.final_cost, rel=1e-12)
    assert list(times) == sorted(times) and times[-1] <= run.seconds


def test_pycolmap_trace_caps_reach_the_target_and_cap_zero_is_the_start():
    pytest.importorskip("pycolmap")
    from sparsa.bench.ba_peers import pycolmap_trace

    scene = scene_of("PINHOLE", cameras=4, points=60)
    full = run_pycolmap(scene, **TIGHT)
    trace = pycolmap_trace(scene, full.recomputed_final_cost * (1 + 1e-6), max_iterations=100, **TIGHT)
    assert trace[0][1] == pytest.approx(full.recomputed_initial_cost, rel=1e-12)
    assert trace[-1][1] <= full.recomputed_final_cost * (1 + 1e-6) < trace[-2][1]
    assert len(trace) <= 2 + full.iterations.bit_length()  # caps 0, 1, 2, 4, ...: no more than needed
