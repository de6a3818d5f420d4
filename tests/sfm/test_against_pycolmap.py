"""Our final cost against pycolmap's bundle adjustment (Ceres) from the same start."""

import pytest

from sparsa.sfm import BAOptions, solve_ba


@pytest.mark.parametrize("spec, loss", [
    ("synthetic:cameras=50,points=5000,seed=1", "trivial"),  # the acceptance problem
    ("synthetic:cameras=12,points=400,seed=3,model=OPENCV,outliers=0.02", "huber"),
])
def test_solve_ba_reaches_pycolmap_final_cost(spec, loss, scene_factory):
    pytest.importorskip("pycolmap")
    from sparsa.bench.ba_peers import run_pycolmap

    scene, _ = scene_factory(spec)
    _, ours = solve_ba(scene, BAOptions(loss=loss))
    theirs = run_pycolmap(scene, loss=loss)
    assert abs(ours.initial_cost - theirs.initial_cost) <= 1e-12 * theirs.initial_cost
    assert abs(ours.final_cost - theirs.final_cost) <= 1e-6 * theirs.final_cost
