"""GPTQ on the OBS engine against a straightforward column-by-column OBQ implementation."""

import pytest
import torch

from sparsa.compress.config import GPTQConfig
from sparsa.compress.gptq import gptq_solve
from sparsa.compress.hessian import HessianAccumulator, prepare_hessian
from sparsa.errors import SparsaError
from sparsa.formats.quant import Quant, grid_codes, grid_stats


def layer(out=24, inp=64, tokens=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    X = torch.randn(tokens, inp, generator=g) @ (torch.randn(inp, inp, generator=g) * 0.3) + torch.randn(inp, generator=g)
    acc = HessianAccumulator(inp)
    acc.add(X)
    return W, X, acc.H


def obq_reference(W, H, bits, group_size, percdamp, symmetric=False):
    """Quantize column by column with the explicit inverse Hessian update (GPTQ eq. 2-3, no
    Cholesky, no lazy blocks), in float64; groups fitted when reached (identity order)."""
    W, H = W.double().clone(), H.double().clone()
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:
            scale, minimum = grid_stats(W[:, j:j + group_size], bits, symmetric)
        q = grid_codes(W[:, j], scale, minimum, bits).double() * scale.double() + minimum.double()
        Q[:, j] = q
        err = (W[:, j] - q) / Hinv[j, j]
        W[:, j + 1:] -= err[:, None] * Hinv[j, j + 1:][None, :]
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return Q.float()


def test_hessian_accumulator_batches_equal_one_pass():
    X = torch.randn(300, 16)
    acc = HessianAccumulator(16)
    for chunk in X.split(77):
        acc.add(chunk[None])  # leading dims are flattened
    torch.testing.assert_close(acc.H, 2 * X.T @ X / 300, rtol=1e-5, atol=1e-5)
    assert acc.n == 300


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_solve_matches_column_by_column_reference(symmetric):
    W, _, H = layer()
    config = GPTQConfig(bits=3, group_size=16, act_order=False, percdamp=0.01, symmetric=symmetric)
    _, Q, _ = gptq_solve(W, H, config, where="t")
    ref = obq_reference(W, H, 3, 16, 0.01, symmetric)
    same = (Q - ref).abs() < 1e-3
    assert same.float().mean() > 0.99  # rare rounding ties may flip one code and its followers
    assert torch.allclose(Q[:, :8], ref[:, :8], atol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_format_decodes_to_solver_weights_and_beats_rtn(act_order, symmetric):
    W, X, H = layer(seed=1)
    config = GPTQConfig(bits=3, group_size=32, act_order=act_order, symmetric=symmetric)
    fmt, Q, loss = gptq_solve(W, H, config, where="t")
    assert isinstance(fmt, Quant) and torch.equal(fmt.to_dense(), Q)
    assert fmt.symmetric == symmetric and (fmt.minimum is None) == symmetric
    rtn = Quant.from_dense(W, bits=3, group_size=32, symmetric=symmetric).to_dense()
    assert ((X @ (Q - W).T) ** 2).mean() < 0.8 * ((X @ (rtn - W).T) ** 2).mean()
    assert loss.shape == (W.shape[0],) and bool((loss >= 0).all())


def test_gptq_group_size_zero_means_whole_rows():
    W, _, H = layer()
    fmt, _, _ = gptq_solve(W, H, GPTQConfig(bits=4, group_size=0), where="t")
    assert fmt.group_size == W.shape[1] and fmt.scale.shape == (W.shape[0], 1)


def test_prepare_hessian_dead_inputs_pinned_and_weights_zeroed():
    W, X, _ = layer()
    X[:, [3, 10]] = 0  # inputs never active
    acc = HessianAccumulator(X.shape[1])
    acc.add(X)
    prep = prepare_hessian(acc.H, percdamp=0.01, act_order=True, where="t")
    assert prep.dead.nonzero().flatten().tolist() == [3, 10]
    assert torch.isfinite(prep.Hinv).all()
    fmt, Q, _ = gptq_solve(W, acc.H, GPTQConfig(bits=4, group_size=16), where="t")
    assert torch.isfinite(Q).all()


def test_prepare_hessian_nonfinite_raises_naming_layer():
    H = torch.eye(4)
    H[1, 1] = float("nan")
    with pytest.raises(SparsaError, match="layers.3.q_proj: the calibration Hessian holds inf/nan"):
        prepare_hessian(H, percdamp=0.01, act_order=False, where="layers.3.q_proj")


def test_prepare_hessian_indefinite_raises_damping_then_errors(caplog):
    H = torch.diag(torch.tensor([1.0, 1.0, -1.5]))  # mean diag 1/6: damping 0.01 is not enough
    prep = prepare_hessian(H, percdamp=1.0, act_order=False, where="t")
    assert prep.percdamp_used == 10.0 and "damping raised" in caplog.text
    with pytest.raises(SparsaError, match="singular even with damping"):
        prepare_hessian(torch.diag(torch.tensor([1.0, -100.0])), percdamp=0.01, act_order=False, where="t")


def test_hessian_accumulator_nonfinite_activations_raise():
    acc = HessianAccumulator(3, where="layers.0.k_proj")
    with pytest.raises(SparsaError, match="layers.0.k_proj: non-finite calibration activations"):
        acc.add(torch.tensor([[1.0, float("inf"), 0.0]]))
