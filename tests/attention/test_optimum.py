"""TopMass: each head's exact top-c probability mass from two streamed passes, against sorting."""

import math

import torch

from sparsa.attention.optimum import TopMass


def causal_probs(heads: int, n: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    """[heads, n, n] causal softmax rows (0 above the diagonal); head 1 has integer logits (ties)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(heads, n, n, generator=g) * spread
    logits[1] = logits[1].round()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, -math.inf).softmax(dim=-1)


def streamed(p: torch.Tensor, budgets: torch.Tensor, rows: int) -> torch.Tensor:
    top = TopMass(p.shape[0])
    for r0 in range(0, p.shape[1], rows):
        top.add_coarse(p[:, r0:r0 + rows, :r0 + rows])
    top.plan(budgets)
    for r0 in range(0, p.shape[1], rows):
        top.add_fine(p[:, r0:r0 + rows, :r0 + rows])
    return top.masses()


def brute_force(p: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    n = p.shape[1]
    values = p[:, torch.ones(n, n, dtype=torch.bool).tril()].sort(dim=-1, descending=True).values.double()
    return torch.stack([torch.stack([values[h, :c].sum() for h, c in enumerate(row.tolist())]) for row in budgets])


def test_top_mass_random_budgets_equals_sorting_all_causal_probabilities(one_thread):
    heads, n = 3, 200
    p = causal_probs(heads, n, seed=0)
    all_pairs = n * (n + 1) // 2
    budgets = torch.cat([torch.tensor([[0, 1, all_pairs], [all_pairs - 1, 7, 123]]),
                         torch.randint(0, all_pairs + 1, (4, heads), generator=torch.Generator().manual_seed(1))])
    for rows in (16, 48):  # row groups; with 48 the last group is short
        got = streamed(p, budgets, rows)
        assert torch.allclose(got, brute_force(p, budgets), rtol=1e-12, atol=1e-12)


def test_top_mass_underflowed_zeros_and_saturated_rows_still_exact(one_thread):
    p = causal_probs(2, 64, seed=2, spread=60.0)  # many exact 0s and 1s inside the causal area
    assert (p[:, torch.ones(64, 64, dtype=torch.bool).tril()] == 0).any()
    budgets = torch.tensor([[64, 64], [65, 100], [2080, 2000]])
    assert torch.allclose(streamed(p, budgets, 16), brute_force(p, budgets), rtol=1e-12, atol=1e-12)
