import pytest
import torch

from sparsa.sfm.align import align_similarity, camera_centres, centre_errors
from sparsa.sfm.cameras import MODELS, project, unproject
from sparsa.sfm.config import GPOptions
from sparsa.sfm.gp import GPProblem, GPState, solve_gp, world_rays


def test_unproject_inverts_project_for_every_model():
    g = torch.Generator().manual_seed(0)
    for model, cam in MODELS.items():
        params = torch.rand(9, cam.n_params, generator=g, dtype=torch.float64) * 0.1 + 0.05
        params[:, list(cam.focal)] = 500.0
        X = torch.randn(9, 3, generator=g, dtype=torch.float64) * 0.3
        X[:, 2] = cam.sign * (1 + torch.rand(9, generator=g, dtype=torch.float64))
        rays = unproject(model, params, project(model, params, X))
        torch.testing.assert_close(rays, X / X.norm(dim=1, keepdim=True), rtol=0, atol=1e-12)


def test_gp_jacobian_equals_autograd(small_scene):
    scene, _ = small_scene
    problem = GPProblem(scene.n_images, scene.n_points, world_rays(scene), scene.obs_image, scene.obs_point)
    g = torch.Generator().manual_seed(1)
    state = GPState(torch.randn(scene.n_images, 3, generator=g, dtype=torch.float64) * 20,
                    torch.randn(scene.n_points, 3, generator=g, dtype=torch.float64) * 5)
    lin = problem.linearize(state, "trivial", 1.0)

    def residuals(c, X):
        return problem.residuals(GPState(c, X))[0]

    Jc, JX = torch.autograd.functional.jacobian(residuals, (state.centres, state.points))  # [M,3,I,3], [M,3,P,3]
    rows = torch.arange(len(problem.obs_image))
    torch.testing.assert_close(lin.Jc, Jc[rows, :, problem.obs_image], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lin.Jx, JX[rows, :, problem.obs_point], rtol=1e-9, atol=1e-12)


def test_gp_residual_is_zero_at_the_noise_free_truth(scene_factory):
    _, truth = scene_factory("synthetic:cameras=5,points=40,seed=2,noise=0")
    problem = GPProblem(truth.n_images, truth.n_points, world_rays(truth), truth.obs_image, truth.obs_point)
    r, _, d = problem.residuals(GPState(camera_centres(truth), truth.points))
    assert float(r.abs().max()) < 1e-12 and bool((d > 0).all())


def test_solve_gp_recovers_centres_from_a_random_start(scene_factory):
    _, truth = scene_factory("synthetic:cameras=12,points=400,seed=4,noise=0")
    out, summary = solve_gp(truth, GPOptions())
    assert summary.termination == "CONVERGENCE"
    assert float(centre_errors(out, truth).max()) < 1e-4


def test_solve_gp_with_pixel_noise_lands_near_the_truth(scene_factory):
    _, truth = scene_factory("synthetic:cameras=12,points=400,seed=4,noise=0.5")
    out, _ = solve_gp(truth, GPOptions())
    assert float(centre_errors(out, truth).median()) < 0.1  # scene radius ~ 30 units


def test_align_similarity_recovers_a_known_transform():
    g = torch.Generator().manual_seed(3)
    src = torch.randn(10, 3, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.linalg.det(Q))
    dst = 2.5 * src @ Q.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    s, R, t = align_similarity(src, dst)
    assert abs(s - 2.5) < 1e-12
    torch.testing.assert_close(R, Q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_solve_gp_cuda_equals_cpu(scene_factory):
    _, truth = scene_factory("synthetic:cameras=8,points=200,seed=4,noise=0.5")
    _, cpu = solve_gp(truth, GPOptions())
    _, gpu = solve_gp(truth, GPOptions(), device="cuda")
    assert abs(cpu.final_cost - gpu.final_cost) <= 1e-6 * max(cpu.final_cost, 1e-12)
