"""The Schur-complement solves against a dense solve of the whole damped normal equations."""

import pytest
import torch

from sparsa.sfm.config import BAOptions
from sparsa.sfm.lm import lm_diagonal, solve_camera_step
from sparsa.sfm.ba import build_problem
from sparsa.sfm.schur import SchurSystem


def dense_jacobian(problem, lin) -> torch.Tensor:
    """J [2M, D + 3P] from the per-observation blocks."""
    M, D = problem.obs_xy.shape[0], problem.n_camera_unknowns
    J = torch.zeros(M, 2, D + 3 * problem.n_points, dtype=torch.float64)
    rows = torch.arange(M)[:, None]
    J[rows, :, problem.cols] = lin.Jc.transpose(1, 2)
    J[rows, :, D + 3 * problem.obs_point[:, None] + torch.arange(3)] = lin.Jx.transpose(1, 2)
    return J.view(2 * M, -1)


@pytest.fixture(scope="module")
def system(small_scene):
    scene, _ = small_scene
    options = BAOptions(fixed_images=(0,))
    problem, state = build_problem(scene, options)
    lin = problem.linearize(state, "huber", 3.0)
    diag_c, diag_p = lm_diagonal(problem, lin, options)
    return problem, lin, SchurSystem(problem, lin, diag_c, diag_p, mu=1e3)


def test_schur_step_equals_dense_solve(system):
    problem, lin, sys = system
    J = dense_jacobian(problem, lin)
    V = sys.point_blocks()
    damp_p = (torch.linalg.inv(sys.V_inv) - V).diagonal(dim1=1, dim2=2).reshape(-1)
    A = J.T @ J + torch.diag(torch.cat([sys.damp_c, damp_p]))
    g = J.T @ lin.r.reshape(-1)
    expected = torch.linalg.solve(A, -g)
    g_c, g_p = sys.gradient()
    torch.testing.assert_close(torch.cat([g_c, g_p.reshape(-1)]), g, rtol=1e-12, atol=1e-9)
    D = problem.n_camera_unknowns
    for solver in ("dense_schur", "iterative_schur"):
        options = BAOptions(pcg_tolerance=1e-14, pcg_max_iterations=2000)
        dc, _ = solve_camera_step(sys, sys.rhs(g_c, g_p), solver, options)
        dp = sys.back_substitute(dc, g_p)
        scale = float(expected.abs().max())
        assert float((dc - expected[:D]).abs().max()) <= 1e-10 * scale, solver
        assert float((dp.reshape(-1) - expected[D:]).abs().max()) <= 1e-10 * scale, solver


def test_schur_dense_matrix_equals_matvec(system):
    problem, _, sys = system
    S = sys.dense()
    x = torch.randn(problem.n_camera_unknowns, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(S @ x, sys.matvec(x), rtol=1e-11, atol=1e-8)
    torch.testing.assert_close(S, S.T, rtol=1e-12, atol=1e-7)


def test_block_jacobi_inverts_the_diagonal_blocks_of_s(system):
    problem, _, sys = system
    S = sys.dense()
    pose_inv, intr_inv = sys.block_jacobi()
    r = torch.randn(problem.n_camera_unknowns, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sys.precondition([pose_inv, intr_inv], r)[12:18], pose_inv[2] @ r[12:18])
    torch.testing.assert_close(torch.linalg.inv(pose_inv[2]), S[12:18, 12:18], rtol=1e-10, atol=1e-6)
    I6, n = 6 * problem.n_images, problem.n_params
    torch.testing.assert_close(torch.linalg.inv(intr_inv[1]), S[I6 + n:I6 + 2 * n, I6 + n:I6 + 2 * n],
                               rtol=1e-10, atol=1e-6)
