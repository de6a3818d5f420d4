"""Recall, density and output error on planted stripes, where the answers are known."""

import math

import torch

from sparsa.attention.metrics import kept_pairs, measure, oracle_mass
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions

REGIONS = StripeRegions(block_m=4, step=2, init=2)  # groups of 8 rows
N, D = 32, 16


def planted(stripe_keys: list[int], weight: float = 12.0):
    """Queries all equal to u; keys orthogonal to u except ``stripe_keys`` (score ``weight``)."""
    q = torch.zeros(1, 1, N, D)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, N, D)
    k[..., 1] = torch.randn(N, generator=torch.Generator().manual_seed(0)) * 1e-3
    k[0, 0, stripe_keys, 0] = weight
    v = torch.randn(1, 1, N, D, generator=torch.Generator().manual_seed(1))
    return q, k, v


def index_of(keys_per_group: dict[int, list[int]]) -> StripeIndex:
    mask = torch.zeros(1, 1, REGIONS.n_groups(N), N, dtype=torch.bool)
    for g, keys in keys_per_group.items():
        mask[0, 0, g, keys] = True
    return StripeIndex.from_mask(mask & REGIONS.stripe_candidates(N))


def test_measure_planted_stripe_found_recall_near_one_and_small_error():
    q, k, v = planted([5])
    found = index_of({g: [5] for g in range(1, 4)})
    m = measure(q, k, v, REGIONS, {"found": found, "missed": None}, scale=1.0, oracle=False)
    assert m["found"].recall > 0.999 and m["found"].rel_err < 1e-2
    # rows 8.. lose key 5: its mass e^12 / (e^12 + i) is nearly all of theirs
    assert m["missed"].recall < 0.5 and m["missed"].rel_err > 0.3


def test_measure_density_counts_dense_region_and_stripe_rows():
    q, k, v = planted([5])
    found = index_of({1: [5], 2: [3, 5], 3: [5]})
    m = measure(q, k, v, REGIONS, {"a": found}, scale=1.0, oracle=False)["a"]
    dense = int(REGIONS.dense_mask(N).sum())
    assert m.kept_pairs == dense + 8 * 4 == kept_pairs(REGIONS, found, 1, 1, N)
    assert math.isclose(m.density, (dense + 32) / (N * (N + 1) / 2))


def test_measure_all_stripes_equals_dense_attention():
    q, k, v = planted([5, 17])
    everything = StripeIndex.from_mask(REGIONS.stripe_candidates(N)[None, None])
    m = measure(q, k, v, REGIONS, {"all": everything}, scale=1.0)
    assert math.isclose(m["all"].recall, 1.0, rel_tol=1e-6) and m["all"].rel_err < 1e-6
    assert m["all"].density == 1.0 and m["all"].close_share == 1.0
    assert math.isclose(m["oracle"].recall, 1.0, rel_tol=1e-6)


def test_oracle_mass_keeps_each_rows_largest_probabilities():
    p = torch.tensor([[[[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.4, 0.1]]]])  # rows 2 and 3 (r0 = 2)
    # density 0.5: row 2 keeps round(1.5) = 2 keys, row 3 keeps 2
    assert math.isclose(oracle_mass(p, 2, 0.5), (0.6 + 0.3) + (0.4 + 0.25), rel_tol=1e-6)


def test_measure_oracle_is_at_least_any_selector_at_its_density():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, N, D, generator=g) * 2 for _ in range(3))
    half = StripeIndex.from_mask((torch.rand(1, 2, REGIONS.n_groups(N), N, generator=g) < 0.5)
                                 & REGIONS.stripe_candidates(N))
    m = measure(q, k, v, REGIONS, {"half": half}, scale=0.25)
    assert m["oracle"].recall >= m["half"].recall - 1e-6
    assert m["oracle"].density == m["half"].density
