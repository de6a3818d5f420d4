"""--method auto: budget respected, allocation optimal on small cases, end to end on a tiny Llama."""

import itertools

import pytest
import torch

from sparsa.compress import AutoConfig, compress_
from sparsa.compress.auto import allocate, output_error
from sparsa.errors import SparsaError
from sparsa.nn import sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint


def brute_force(options, budget):
    best = None
    for choice in itertools.product(*[range(len(o)) for o in options]):
        size = sum(o[k][0] for o, k in zip(options, choice))
        err = sum(o[k][1] for o, k in zip(options, choice))
        if size <= budget and (best is None or err < best[0]):
            best = (err, list(choice))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_allocate_respects_budget_and_is_near_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    options = []
    for _ in range(5):
        sizes = sorted(torch.randint(10, 100, (4,), generator=g).tolist())
        errors = sorted(torch.rand(4, generator=g).tolist(), reverse=True)  # bigger formats, smaller errors
        options.append(list(zip(sizes, errors)))
    budget = sum(o[0][0] for o in options) + int(torch.randint(0, 150, (1,), generator=g))
    choice = allocate(options, budget)
    assert sum(o[k][0] for o, k in zip(options, choice)) <= budget
    optimum, _ = brute_force(options, budget)
    assert sum(o[k][1] for o, k in zip(options, choice)) <= optimum * 1.25 + 1e-9


def test_allocate_nothing_fits_takes_smallest():
    assert allocate([[(10, 1.0), (20, 0.5)], [(30, 1.0), (5, 2.0)]], 1) == [0, 1]


def test_output_error_is_hessian_weighted_output_mse():
    W, Q, X = torch.randn(4, 6), torch.randn(4, 6), torch.randn(50, 6)
    H = 2 * X.T @ X / 50
    assert output_error(W, Q, H) == pytest.approx(float(2 * ((X @ (W - Q).T) ** 2).sum() / 50), rel=1e-4)


def test_auto_budget_out_of_range_raises():
    with pytest.raises(SparsaError, match=r"--budget 1.0 is outside \[2, 16\]"):
        AutoConfig(budget=1.0)


def test_compress_auto_meets_budget_and_reloads(tiny_llama, tiny_tokenizer, tmp_path):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    config = AutoConfig(budget=3.5, nsamples=4, seqlen=32)
    summary = compress_(tiny_llama, config, calibration=windows, progress=False)
    assert summary.layers == 14 and sum(summary.choices.values()) == 14
    assert summary.bits_per_param <= 3.5
    manifest = save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    assert manifest["bits_per_param"] <= 3.5 and manifest["bits_per_param"] == summary.bits_per_param
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert {type(m.weight_format).__name__ for _, m in sparse_linears(loaded)} <= {"SpQR", "SparseQuant"}
    with torch.no_grad():
        assert torch.equal(loaded(windows[:1]).logits, tiny_llama(windows[:1]).logits)
