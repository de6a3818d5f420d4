"""Recall, density and output error on planted stripes, where the answers are known; the recall
bounds (per-row top-k, optimum) against brute force and against every other mask."""

import math

import torch

from sparsa.attention.anchor import identify_reference
from sparsa.attention.metrics import head_pairs, kept_pairs, measure, row_topk_counts, row_topk_mass
from sparsa.kernels.reference_attention import anchors_reference
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
    m = measure(q, k, v, REGIONS, {"found": found, "missed": None}, scale=1.0, bounds=False)
    assert m["found"].recall > 0.999 and m["found"].rel_err < 1e-2
    # rows 8.. lose key 5: its mass e^12 / (e^12 + i) is nearly all of theirs
    assert m["missed"].recall < 0.5 and m["missed"].rel_err > 0.3


def test_measure_density_counts_dense_region_and_stripe_rows():
    q, k, v = planted([5])
    found = index_of({1: [5], 2: [3, 5], 3: [5]})
    m = measure(q, k, v, REGIONS, {"a": found}, scale=1.0, bounds=False)["a"]
    dense = int(REGIONS.dense_mask(N).sum())
    assert m.kept_pairs == dense + 8 * 4 == kept_pairs(REGIONS, found, 1, 1, N)
    assert math.isclose(m.density, (dense + 32) / (N * (N + 1) / 2))


def test_measure_all_stripes_equals_dense_attention():
    q, k, v = planted([5, 17])
    everything = StripeIndex.from_mask(REGIONS.stripe_candidates(N)[None, None])
    m = measure(q, k, v, REGIONS, {"all": everything}, scale=1.0)
    assert math.isclose(m["all"].recall, 1.0, rel_tol=1e-6) and m["all"].rel_err < 1e-6
    assert m["all"].density == 1.0 and m["all"].close_share == 1.0
    for name in ("per_row_topk", "optimum"):
        assert math.isclose(m[name].recall, 1.0, rel_tol=1e-6) and m[name].density == 1.0
    assert abs(m["all"].gap_to_optimum) < 1e-6


def test_row_topk_mass_keeps_each_rows_largest_probabilities():
    p = torch.tensor([[[[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.4, 0.1]]]])  # rows 2 and 3
    counts = row_topk_counts(4, 0.5)[2:]  # round(1.5) = 2 (half to even) and round(2.0) = 2
    assert counts.tolist() == [2, 2]
    assert math.isclose(row_topk_mass(p, counts), (0.6 + 0.3) + (0.4 + 0.25), rel_tol=1e-6)
    assert row_topk_counts(4, 0.01).tolist() == [1, 1, 1, 1] and row_topk_counts(3, 1.0).tolist() == [1, 2, 3]


def random_layer(seed: int, heads: int = 2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, heads, N, D, generator=g) * 2 for _ in range(3))


def brute_force_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """[H, N, N] dense causal softmax of every head at once."""
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    return (q[0] @ k[0].transpose(-1, -2) * scale).masked_fill(~causal, -math.inf).softmax(dim=-1)


def test_measure_optimum_is_each_heads_largest_probabilities_at_its_pair_count(one_thread):
    q, k, v = random_layer(3)
    share = torch.tensor([0.3, 0.7])[None, :, None, None]  # of the stripe candidates, per head
    uneven = StripeIndex.from_mask((torch.rand(1, 2, REGIONS.n_groups(N), N, generator=torch.Generator().manual_seed(4))
                                  < share) & REGIONS.stripe_candidates(N))
    m = measure(q, k, v, REGIONS, {"uneven": uneven, "none": None}, scale=0.25)
    p = brute_force_probs(q, k, 0.25)
    values = p[:, torch.ones(N, N, dtype=torch.bool).tril()].sort(dim=-1, descending=True).values.double()

    def best(counts):
        return float(sum(values[h, :c].sum() for h, c in enumerate(counts.tolist()))) / (2 * N)

    counts = head_pairs(REGIONS, uneven, 1, 2, N)
    assert int(counts.sum()) == m["uneven"].kept_pairs and counts[0] != counts[1]  # heads differ
    assert math.isclose(m["optimum"].recall, best(counts), rel_tol=1e-6)
    assert m["optimum"].density == m["uneven"].density and m["optimum"].kept_pairs == m["uneven"].kept_pairs
    none = head_pairs(REGIONS, None, 1, 2, N)
    assert math.isclose(m["none"].recall + m["none"].gap_to_optimum, best(none), rel_tol=1e-6)
    topk = torch.full((2,), int(row_topk_counts(N, m["uneven"].density).sum()))
    assert m["per_row_topk"].kept_pairs == int(topk.sum())
    assert math.isclose(m["per_row_topk"].recall + m["per_row_topk"].gap_to_optimum, best(topk), rel_tol=1e-6)


def test_measure_no_mask_of_the_same_per_head_pair_count_beats_the_optimum(one_thread):
    regions = StripeRegions(block_m=4, step=1, init=2)
    for seed in range(3):
        q, k, v = random_layer(10 + seed)
        anchor = identify_reference(q, k, anchors_reference(q, k, regions, 0.25), regions, 1.0, 0.25, "rows")
        m = measure(q, k, v, regions, {"anchor": anchor, "streaming": None}, scale=0.25)
        for name in ("anchor", "streaming", "per_row_topk"):
            assert m[name].gap_to_optimum >= -1e-6, (seed, name, m[name].gap_to_optimum)
        p = brute_force_probs(q, k, 0.25)
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        counts = head_pairs(regions, anchor, 1, 2, N)
        g = torch.Generator().manual_seed(seed)
        for _ in range(20):  # random masks with the anchor's pair count in every head
            kept = sum(float(p[h][causal][torch.randperm(int(causal.sum()), generator=g)[:c]].sum())
                       for h, c in enumerate(counts.tolist()))
            assert kept / (2 * N) <= m["optimum"].recall + 1e-6
