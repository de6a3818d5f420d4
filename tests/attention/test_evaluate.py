"""AnchorAttention scored on a model's captured attention (a tiny random Llama)."""

import math

import torch

from sparsa.attention.config import AnchorConfig
from sparsa.attention.evaluate import BASELINES, evaluate_attention

SMALL = dict(block_m=4, step=2, init=4, window=0, backend="torch")


def test_evaluate_attention_reports_every_layer_and_selector(tiny_llama):
    ids = torch.randint(0, 128, (1, 64), generator=torch.Generator().manual_seed(0))
    configs = [AnchorConfig(theta=t, **SMALL) for t in (-math.inf, 1.0, math.inf)]
    low, mid, high = evaluate_attention(tiny_llama, ids, configs, progress=False)
    assert len(mid.layers) == 2 and set(mid.overall) == {"anchor", *BASELINES, "per_row_topk", "optimum"}
    assert math.isclose(high.overall["anchor"]["recall"], 1.0, rel_tol=1e-6)
    assert high.overall["anchor"]["density"] == 1.0 and high.overall["anchor"]["rel_err"] < 1e-6
    # theta = -inf gathers nothing: exactly the streaming floor
    assert low.overall["anchor"]["density"] == low.overall["streaming"]["density"] < 1
    assert math.isclose(low.overall["anchor"]["recall"], low.overall["streaming"]["recall"])
    for name in ("vertical_slash", "flex_blocks"):  # matched to no stripes: gamma 0 keeps none
        assert low.overall[name]["density"] == low.overall["streaming"]["density"]
    assert low.overall["anchor"]["density"] <= mid.overall["anchor"]["density"] <= 1.0
    for name in ("vertical_slash", "flex_blocks"):  # matched to the anchor's mean density over heads
        assert abs(mid.overall[name]["density"] - mid.overall["anchor"]["density"]) < 0.05
    optimum = mid.overall["optimum"]
    assert optimum["density"] == mid.overall["anchor"]["density"] and "rel_err" not in optimum
    assert math.isclose(optimum["recall"], mid.overall["anchor"]["recall"] + mid.overall["anchor"]["gap_to_optimum"])
    for name in ("anchor", *BASELINES, "per_row_topk"):  # nothing beats the optimum at its own pair counts
        assert mid.overall[name]["gap_to_optimum"] >= -1e-6
    d = mid.to_dict()
    assert set(d) >= {"recall", "density", "rel_err", "theta", "layers", "overall"} and d["theta"] == 1.0


def test_evaluate_attention_without_baselines_scores_anchor_only(tiny_llama):
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    (report,) = evaluate_attention(tiny_llama, ids, [AnchorConfig(**SMALL)], baselines=False, progress=False)
    assert set(report.overall) == {"anchor"}
