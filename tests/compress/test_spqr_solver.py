"""SpQR on the OBS engine: exact format, outliers exactly the weights above tau, bits formula."""

import pytest
import torch

from sparsa.compress.config import SpQRConfig
from sparsa.compress.hessian import HessianAccumulator
from sparsa.compress.spqr import leave_one_out_gain, round_to_grid, row_grid, spqr_solve
from sparsa.formats.spqr import SpQR, second_level_quantize


def test_spqr_solve_format_decodes_to_solver_weights():
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), torch.randn(300, 64) @ torch.randn(64, 64)
    W[3, 7] = 12.0
    acc = HessianAccumulator(64)
    acc.add(X)
    fmt, Q, _ = spqr_solve(W, acc.H, SpQRConfig(bits=3, group_size=16, stat_group_size=16), where="t")
    assert isinstance(fmt, SpQR) and torch.equal(fmt.to_dense(), Q)
    rows, cols, values = fmt.outliers()
    kept = dict(zip(zip(rows.tolist(), cols.tolist()), values.float().tolist()))
    assert kept[(3, 7)] == Q[3, 7]  # the updated weight, stored in fp16
    assert abs(kept[(3, 7)] - 12.0) < 0.5 and Q[3, 7] == Q[3, 7].half().float()


def test_spqr_outliers_exactly_weights_above_tau_without_propagation():
    """With H = c·I nothing propagates, so each weight's fate follows from its own rounding error."""
    torch.manual_seed(1)
    W = torch.randn(16, 32)
    W[torch.rand(16, 32) < 0.05] *= 8
    H = 2.0 * torch.eye(32)
    tau = 0.1
    config = SpQRConfig(bits=3, group_size=8, stat_group_size=4, outlier_threshold=tau, simplified_outliers=True,
                        act_order=False, percdamp=0.01)
    fmt, Q, _ = spqr_solve(W, H, config, where="t")
    d = (2.0 * 1.01) ** -0.5  # upper Cholesky of (H + damp)^-1: a diagonal of 1/sqrt(2·1.01)
    threshold = tau * (W.var(dim=0) / d**2).mean()
    expected = torch.zeros_like(W, dtype=torch.bool)
    for g in range(0, 32, 8):
        scale, zero = row_grid(W[:, g:g + 8], 3)
        _, _, s = second_level_quantize(scale[:, None], 3, 4)
        _, _, z = second_level_quantize(zero[:, None], 3, 4)
        _, q = round_to_grid(W[:, g:g + 8], s, z, 3)
        expected[:, g:g + 8] = ((q - W[:, g:g + 8]) / d).square() > threshold
    rows, cols, _ = fmt.outliers()
    got = torch.zeros_like(expected)
    got[rows, cols] = True
    assert torch.equal(got, expected) and expected.any()
    assert torch.equal(Q[expected], W[expected].half().float())


def test_leave_one_out_gain_singles_out_the_outlier():
    Wg = torch.tensor([[0.1, -0.2, 0.05, 5.0, 0.0, 0.15, -0.1, 0.2]])
    gain = leave_one_out_gain(Wg, torch.ones(8), 3)
    scale, zero = row_grid(Wg, 3)
    baseline = (round_to_grid(Wg, scale[:, None], zero[:, None], 3)[1] - Wg).square().sum()
    # leaving the outlier out, the others fit a fine grid: nearly the whole baseline error goes
    assert gain.argmax().item() == 3 and gain[0, 3] > 0.95 * baseline
    assert gain[0, 3] > 2 * torch.cat([gain[0, :3], gain[0, 4:]]).max()


@pytest.mark.parametrize("bits", [3, 4])
def test_spqr_bits_per_param_follow_paper_formula(bits):
    torch.manual_seed(2)
    W, X = torch.randn(64, 128), torch.randn(500, 128)
    acc = HessianAccumulator(128)
    acc.add(X)
    fmt, _, _ = spqr_solve(W, acc.H, SpQRConfig(bits=bits), where="t")
    nnz = fmt.outlier_values.numel()
    # 32 bits per outlier; metadata: 8-bit row counts (0..128), 7-bit perm entries
    expected = bits + 6 / 16 + 64 / 256 + (32 * nnz + 8 * 64 + 7 * 128) / (64 * 128)
    assert 8 * fmt.nbytes / fmt.numel == pytest.approx(expected, abs=1e-12)
