import pytest
import torch

from sparsa.data.scene import CAMERA_MODELS
from sparsa.sfm.cameras import MODELS, project


def test_models_match_the_scene_parameter_tables():
    assert set(MODELS) == set(CAMERA_MODELS)
    for name, cam in MODELS.items():
        assert cam.n_params == len(CAMERA_MODELS[name][1])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_project_jacobians_equal_autograd(model):
    g = torch.Generator().manual_seed(0)
    cam = MODELS[model]
    params = torch.rand(7, cam.n_params, generator=g, dtype=torch.float64) * 0.3 + 0.4
    X = torch.randn(7, 3, generator=g, dtype=torch.float64)
    X[:, 2] = (X[:, 2].abs() + 1.5) * cam.sign
    _, J_X, J_p = project(model, params, X, jacobians=True)
    one = torch.func.vmap(torch.func.jacrev(lambda x, p: project(model, p[None], x[None])[0], argnums=(0, 1)))
    auto_X, auto_p = one(X, params)
    torch.testing.assert_close(J_X, auto_X, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(J_p, auto_p, rtol=1e-12, atol=1e-13)


def test_project_bal_negates_and_distorts_radially():
    params = torch.tensor([[100.0, 0.1, 0.01]], dtype=torch.float64)
    X = torch.tensor([[1.0, 2.0, -4.0]], dtype=torch.float64)
    p = torch.tensor([0.25, 0.5], dtype=torch.float64)
    r2 = float((p * p).sum())
    expected = 100 * (1 + 0.1 * r2 + 0.01 * r2 * r2) * p
    torch.testing.assert_close(project("BAL", params, X)[0], expected, rtol=1e-15, atol=0)


def test_project_simple_radial_adds_the_principal_point():
    params = torch.tensor([[500.0, 320.0, 240.0, -0.2]], dtype=torch.float64)
    X = torch.tensor([[0.2, -0.1, 1.0]], dtype=torch.float64)
    s = 1 - 0.2 * (0.04 + 0.01)
    expected = torch.tensor([320 + 500 * 0.2 * s, 240 - 500 * 0.1 * s], dtype=torch.float64)
    torch.testing.assert_close(project("SIMPLE_RADIAL", params, X)[0], expected, rtol=1e-15, atol=1e-12)
