import pytest

from sparsa.errors import SparsaError
from sparsa.sfm.align import centre_errors
from sparsa.sfm import solve_ba
from sparsa.sfm.config import BAOptions, GPOptions
from sparsa.sfm.pipeline import filter_observations, reprojection_errors, run_sfm


def test_run_sfm_drops_outliers_and_reaches_the_noise_floor(scene_factory):
    scene, truth = scene_factory("synthetic:cameras=10,points=300,seed=6,outliers=0.03")
    out, report = run_sfm(scene, GPOptions(), BAOptions(loss="huber"))
    assert report.filtered[0]["observations_dropped"] > 0.8 * 0.03 * scene.n_observations
    assert float(reprojection_errors(out).max()) <= 4.0
    assert report.ba[-1].final_rmse < 0.75
    assert float(centre_errors(out, truth).median()) < 0.1
    # from scratch (positions thrown away) as good as BA from the near-truth start
    from_start, _ = solve_ba(scene, BAOptions(loss="huber"))
    assert float(centre_errors(out, truth).median()) < 1.5 * float(centre_errors(from_start, truth).median())


def test_filter_observations_keeps_points_with_two_views(small_scene):
    scene, _ = small_scene
    out, dropped = filter_observations(scene, 5.0)
    assert dropped["observations_dropped"] == scene.n_observations - out.n_observations
    assert float(reprojection_errors(out).max()) <= 5.0


def test_filter_observations_refuses_to_empty_an_image(small_scene):
    scene, _ = small_scene
    with pytest.raises(SparsaError, match="leaves an image without observations"):
        filter_observations(scene, 1e-6)
