"""The OBS loop: lazy block updates change nothing but speed."""

import torch

from sparsa.compress.hessian import HessianAccumulator, prepare_hessian
from sparsa.compress.obs import obs_solve


class RoundToTenth:
    def begin_block(self, W1, Hinv1, start):
        pass

    def column(self, W1, Hinv1, i, j):
        return torch.round(W1[:, i] * 10) / 10


def test_obs_solve_block_size_does_not_change_result():
    torch.manual_seed(0)
    X = torch.randn(400, 48)
    acc = HessianAccumulator(48)
    acc.add(X)
    Hinv = prepare_hessian(acc.H, percdamp=0.01, act_order=False, where="t").Hinv
    W = torch.randn(8, 48)
    results = [obs_solve(W, Hinv, RoundToTenth(), blocksize)[0] for blocksize in (1, 7, 16, 48)]
    for Q in results[1:]:
        torch.testing.assert_close(Q, results[0], rtol=0, atol=1e-5)


def test_obs_solve_identity_hessian_is_plain_rounding():
    W = torch.randn(5, 12)
    Q, loss = obs_solve(W, torch.eye(12), RoundToTenth(), 4)
    assert torch.equal(Q, torch.round(W * 10) / 10)
    torch.testing.assert_close(loss, ((W - Q) ** 2).sum(1) / 2)
