import pytest
import torch

from sparsa.sfm.losses import robust


@pytest.mark.parametrize("loss", ["trivial", "huber", "cauchy", "soft_l1"])
def test_robust_derivative_equals_autograd(loss):
    s = torch.tensor([0.0, 0.3, 1.0, 2.5, 40.0], dtype=torch.float64, requires_grad=True)
    rho, rho1 = robust(s, loss, 1.5)
    (grad,) = torch.autograd.grad(rho.sum(), s)
    torch.testing.assert_close(rho1, grad, rtol=1e-12, atol=1e-14)


def test_robust_huber_is_quadratic_inside_and_linear_outside():
    s = torch.tensor([0.25, 16.0], dtype=torch.float64)
    rho, _ = robust(s, "huber", 1.0)
    torch.testing.assert_close(rho, torch.tensor([0.25, 2 * 4.0 - 1], dtype=torch.float64))
