"""The analytic Jacobian blocks against autograd through the same parameterization."""

import torch

from sparsa.data.rotations import angle_axis_to_matrix
from sparsa.sfm.config import BAOptions
from sparsa.sfm.ba import POSE, BAState, build_problem


def test_linearize_blocks_equal_autograd(small_scene):
    scene, _ = small_scene
    problem, state = build_problem(scene, BAOptions(refine_principal_point=True))
    lin = problem.linearize(state, "trivial", 1.0)
    I, n = problem.n_images, problem.n_params

    def residuals(dc, dp):
        pose = dc[: POSE * I].view(I, POSE)
        moved = BAState(angle_axis_to_matrix(pose[:, :3]) @ state.R, state.t + pose[:, 3:],
                        state.intrinsics + dc[POSE * I:].view(-1, n), state.points + dp)
        return problem.reprojection(moved)

    dc0 = torch.zeros(problem.n_camera_unknowns, dtype=torch.float64)
    dp0 = torch.zeros(problem.n_points, 3, dtype=torch.float64)
    Jc_full, Jp_full = torch.autograd.functional.jacobian(residuals, (dc0, dp0))  # [M, 2, D], [M, 2, P, 3]
    M = problem.obs_xy.shape[0]
    rows = torch.arange(M)
    torch.testing.assert_close(lin.Jc, Jc_full[rows[:, None], :, problem.cols].transpose(1, 2), rtol=1e-10,
                               atol=1e-9)
    torch.testing.assert_close(lin.Jx, Jp_full[rows, :, problem.obs_point], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(lin.r, residuals(dc0, dp0))


def test_linearize_fixed_principal_point_has_zero_columns(small_scene):
    scene, _ = small_scene
    problem, state = build_problem(scene, BAOptions())
    lin = problem.linearize(state, "trivial", 1.0)
    assert bool((lin.Jc[:, :, POSE + 1:POSE + 3] == 0).all())  # SIMPLE_RADIAL: f, cx, cy, k
    assert bool((lin.Jc[:, :, POSE] != 0).any())


def test_linearize_huber_weights_residuals_by_sqrt_rho_prime(small_scene):
    scene, _ = small_scene
    problem, state = build_problem(scene, BAOptions())
    plain = problem.linearize(state, "trivial", 1.0)
    huber = problem.linearize(state, "huber", 2.0)
    norm = plain.r.norm(dim=-1)
    w = torch.where(norm <= 2.0, torch.ones_like(norm), torch.sqrt(2.0 / norm))
    torch.testing.assert_close(huber.r, plain.r * w[:, None])
    torch.testing.assert_close(huber.Jx, plain.Jx * w[:, None, None])
