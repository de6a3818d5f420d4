"""The numba Schur products against their torch references (sparsa.sfm.schur, layout=None)."""

import pytest
import torch

from sparsa.sfm.ba import build_problem
from sparsa.sfm.config import BAOptions
from sparsa.sfm.gp import GPProblem, GPState, world_rays
from sparsa.sfm.lm import lm_diagonal
from sparsa.sfm.schur import SchurLayout, SchurSystem


def systems(problem, lin):
    diag = lm_diagonal(problem, lin, BAOptions())
    return (SchurSystem(problem, lin, *diag, 1e2),
            SchurSystem(problem, lin, *diag, 1e2, layout=SchurLayout.of(problem)))


def ba_case(scene_factory, shared: bool):
    scene, _ = scene_factory("synthetic:cameras=7,points=90,seed=8")
    if shared:  # two cameras shared by seven images: intrinsics blocks differ from pose blocks
        scene = scene.replace(intrinsics=scene.intrinsics[:2].clone(), image_camera=torch.arange(7) % 2,
                              camera_sizes=scene.camera_sizes[:2])
    problem, state = build_problem(scene, BAOptions(fixed_images=(1,)))
    return problem, problem.linearize(state, "cauchy", 2.0)


def gp_case(scene_factory):
    scene, _ = scene_factory("synthetic:cameras=7,points=90,seed=8")
    problem = GPProblem(scene.n_images, scene.n_points, world_rays(scene), scene.obs_image, scene.obs_point)
    g = torch.Generator().manual_seed(0)
    state = GPState(torch.randn(7, 3, generator=g, dtype=torch.float64) * 10,
                    torch.randn(scene.n_points, 3, generator=g, dtype=torch.float64))
    return problem, problem.linearize(state, "huber", 0.1)


@pytest.mark.parametrize("case", ["ba", "ba_shared_intrinsics", "gp"])
def test_cpu_schur_kernels_equal_the_torch_reference(case, scene_factory):
    problem, lin = gp_case(scene_factory) if case == "gp" else ba_case(scene_factory, case.endswith("intrinsics"))
    reference, kernel = systems(problem, lin)
    x = torch.randn(problem.n_camera_unknowns, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = reference.matvec_reference(x)
    torch.testing.assert_close(kernel.matvec(x), expected, rtol=1e-12, atol=1e-9 * float(expected.abs().max()))
    for a, b in zip(kernel.block_jacobi(), reference.block_jacobi()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    S = reference.dense_reference()
    torch.testing.assert_close(kernel.dense(), S, rtol=1e-12, atol=1e-10 * float(S.abs().max()))
