"""SparseGPT masks are valid for every pattern and beat magnitude on the layer loss."""

import pytest
import torch

from sparsa.compress.config import SparseGPTConfig, WandaConfig
from sparsa.compress.hessian import HessianAccumulator
from sparsa.compress.magnitude import prune_unstructured
from sparsa.compress.sparsegpt import sparsegpt, sparsegpt_solve
from sparsa.compress.wanda import wanda, wanda_mask
from sparsa.formats import NM, Bitmap, BlockSparse


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 256, generator=g)
    X = torch.randn(1000, 256, generator=g) @ (torch.randn(256, 256, generator=g) * 0.2) + 2 * torch.randn(256, generator=g)
    acc = HessianAccumulator(256)
    acc.add(X)
    return W, X, acc.H


def rel_err(X, W, Q):
    return float(((X @ (Q - W).T) ** 2).mean() / ((X @ W.T) ** 2).mean())


def test_sparsegpt_unstructured_exact_sparsity_per_block_and_beats_magnitude_and_wanda(layer):
    W, X, H = layer
    Q, _, _ = sparsegpt_solve(W, H, SparseGPTConfig(sparsity=0.5), where="t")
    for start in range(0, 256, 128):
        assert int((Q[:, start:start + 128] == 0).sum()) == 32 * 64
    wanda_Q = W * wanda_mask(W, H, WandaConfig(sparsity=0.5), where="t")
    assert rel_err(X, W, Q) < rel_err(X, W, wanda_Q) < rel_err(X, W, W * prune_unstructured(W, 0.5))


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_sparsegpt_nm_every_group_has_at_most_n_nonzeros(layer, n, m):
    W, _, H = layer
    Q, _, _ = sparsegpt_solve(W, H, SparseGPTConfig(pattern=f"{n}:{m}"), where="t")
    per_group = (Q != 0).view(32, -1, m).sum(-1)
    assert int(per_group.max()) <= n and float(per_group.float().mean()) > n - 0.01
    fmt = sparsegpt(W, SparseGPTConfig(pattern=f"{n}:{m}"), where="t", H=H)
    assert isinstance(fmt, NM) and torch.equal(fmt.to_dense(), Q)


def test_sparsegpt_block_pattern_prunes_whole_tiles(layer):
    W, _, H = layer
    fmt = sparsegpt(W, SparseGPTConfig(sparsity=0.75, pattern="block:4x8"), where="t", H=H)
    assert isinstance(fmt, BlockSparse) and fmt.col.numel() == 32 // 4 * 256 // 8 // 4


def test_wanda_keeps_exact_count_per_row_and_nm(layer):
    W, _, H = layer
    fmt = wanda(W, WandaConfig(sparsity=0.6), where="t", H=H)
    assert isinstance(fmt, Bitmap)
    assert ((fmt.to_dense() != 0).sum(1) == 256 - round(256 * 0.6)).all()
    kept = wanda_mask(W, H, WandaConfig(pattern="2:4"), where="t")
    assert (kept.view(32, -1, 4).sum(-1) == 2).all()
    # scores are |w|·‖x‖: a column of moderate weights whose input is 100x larger is always kept
    W2, H2 = W.clone(), H.clone()
    W2[:, 5] = 0.5
    H2[5, 5] *= 1e4
    assert wanda_mask(W2, H2, WandaConfig(sparsity=0.9), where="t")[:, 5].all()
    assert not wanda_mask(W2, H, WandaConfig(sparsity=0.9), where="t")[:, 5].all()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_joint_4bit_stores_sparse_quant_matching_solver(layer, pattern):
    from sparsa.formats import SparseQuant

    W, X, H = layer
    config = SparseGPTConfig(pattern=pattern, bits=4, group_size=64)
    Q, _, step = sparsegpt_solve(W, H, config, where="t")
    fmt = sparsegpt(W, config, where="t", H=H)
    assert isinstance(fmt, SparseQuant) and torch.equal(fmt.to_dense(), Q)
    assert int(step.pruned.sum()) == W.numel() // 2 and bool((Q[step.pruned] == 0).all())
    assert 8 * fmt.nbytes / fmt.numel == pytest.approx(1 + 0.5 * 4 + 32 / 64)
    pruned_only, _, _ = sparsegpt_solve(W, H, SparseGPTConfig(pattern=pattern), where="t")
    assert rel_err(X, W, pruned_only) < rel_err(X, W, Q) < 2 * rel_err(X, W, pruned_only)
