import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.sfm import BAOptions, solve_ba

TIGHT = dict(function_tolerance=1e-14, gradient_tolerance=1e-12, parameter_tolerance=1e-14)


def test_solve_ba_dense_and_iterative_reach_the_same_cost(small_scene):
    scene, _ = small_scene
    _, dense = solve_ba(scene, BAOptions(linear_solver="dense_schur", **TIGHT))
    _, pcg = solve_ba(scene, BAOptions(linear_solver="iterative_schur", **TIGHT))
    assert dense.termination == pcg.termination == "CONVERGENCE"
    assert dense.final_cost < 0.02 * dense.initial_cost
    assert abs(dense.final_cost - pcg.final_cost) <= 1e-9 * dense.final_cost


def test_solve_ba_reaches_the_noise_floor(small_scene):
    scene, truth = small_scene
    _, summary = solve_ba(scene, BAOptions(**TIGHT))
    # 0.5 px per axis: about 0.707 px per observation, a little less after fitting
    assert 0.5 < summary.final_rmse < 0.75
    assert summary.log[-1].gradient_max_norm < 1e-3


def test_solve_ba_keeps_fixed_images_and_principal_points(small_scene):
    scene, _ = small_scene
    out, _ = solve_ba(scene, BAOptions(fixed_images=(0, 2), max_iterations=5))
    assert torch.equal(out.rotations[[0, 2]], scene.rotations[[0, 2]])
    assert torch.equal(out.translations[[0, 2]], scene.translations[[0, 2]])
    assert not torch.equal(out.translations[1], scene.translations[1])
    assert torch.equal(out.intrinsics[:, 1:3], scene.intrinsics[:, 1:3])
    assert not torch.equal(out.intrinsics[:, 0], scene.intrinsics[:, 0])


def test_solve_ba_motion_only_keeps_points(small_scene):
    scene, _ = small_scene
    out, summary = solve_ba(scene, BAOptions(refine_points=False, max_iterations=5))
    assert torch.equal(out.points, scene.points)
    assert summary.final_cost < summary.initial_cost


def test_solve_ba_zero_iterations_returns_the_start(small_scene):
    scene, _ = small_scene
    out, summary = solve_ba(scene, BAOptions(max_iterations=0))
    assert summary.final_cost == summary.initial_cost and summary.iterations == 0
    assert torch.equal(out.rotations, scene.rotations)


def test_solve_ba_huber_resists_outliers(scene_factory):
    scene, truth = scene_factory("synthetic:cameras=8,points=150,seed=5,outliers=0.05")
    plain, _ = solve_ba(scene, BAOptions(max_iterations=50))
    robust, _ = solve_ba(scene, BAOptions(loss="huber", loss_scale=2.0, max_iterations=50))

    def centre_error(s):
        R = s.rotation_matrices()
        c = -(R.transpose(1, 2) @ s.translations[:, :, None])[..., 0]
        Rt = truth.rotation_matrices()
        ct = -(Rt.transpose(1, 2) @ truth.translations[:, :, None])[..., 0]
        # compare camera centres up to the gauge: align centroids and scale
        c, ct = c - c.mean(0), ct - ct.mean(0)
        return float((c / c.norm() - ct / ct.norm()).norm())

    assert centre_error(robust) < 0.5 * centre_error(plain)


def test_solve_ba_rejects_images_without_observations(small_scene):
    scene, _ = small_scene
    keep = scene.obs_image != 4
    bad = scene.replace(obs_image=scene.obs_image[keep], obs_point=scene.obs_point[keep], obs_xy=scene.obs_xy[keep])
    with pytest.raises(SparsaError, match="image 4 has no observations"):
        solve_ba(bad)


def test_ba_options_reject_unknown_loss():
    with pytest.raises(SparsaError, match="--loss tukey"):
        BAOptions(loss="tukey")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_solve_ba_cuda_equals_cpu(small_scene):
    scene, _ = small_scene
    for solver in ("dense_schur", "iterative_schur"):
        _, cpu = solve_ba(scene, BAOptions(linear_solver=solver, **TIGHT))
        _, gpu = solve_ba(scene, BAOptions(linear_solver=solver, **TIGHT), device="cuda")
        assert abs(cpu.final_cost - gpu.final_cost) <= 1e-9 * cpu.final_cost


def test_single_view_scene_is_a_clear_error_not_a_nan(small_scene):
    from sparsa.sfm.filters import drop_unusable

    scene, _ = small_scene
    one = scene.obs_image == 0
    lone = scene.replace(obs_image=scene.obs_image[one], obs_point=scene.obs_point[one], obs_xy=scene.obs_xy[one])
    filtered, report = drop_unusable(lone)
    assert report["observations_dropped"] == int(one.sum())  # one view per point: depth unobservable
    with pytest.raises(SparsaError, match="no observations"):
        solve_ba(filtered)
