"""bench merge on a tiny suite: every method scored, normalization, storage, routing, the written files."""

import json

import pytest

from sparsa.bench.merge import MergeBenchSettings, run_merge_bench
from sparsa.nn.digits_suite import SuiteSettings, build_suite
from sparsa.merge.config import FlexSwitchConfig, RouterConfig, TSwitchConfig
from sparsa.merge.methods.tswitch import compress_task_vector

TINY = MergeBenchSettings(suite=SuiteSettings(domains=("identity", "rot90", "invert"), dim=16, depth=1, heads=2,
                                              pretrain_steps=20, finetune_steps=40),
                          tswitch=TSwitchConfig(drop_ratio=0.6), flexswitch=FlexSwitchConfig(budget_bits=1.0, steps=10),
                          router=RouterConfig(k=5, samples_per_task=30, rank=4, metric_steps=20), lm=None)


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    p = run_merge_bench(TINY, out_dir=out, name="merge_tiny", cache_dir=out / "cache", progress=False)
    return p, out


def test_bench_merge_scores_every_method_on_every_domain(payload):
    p, _ = payload
    methods = [r["method"] for r in p["rows"]]
    assert methods == ["pretrained", "individual", "task_arithmetic", "ties", "dare", "emr", "tall_masks", "tswitch",
                       "flexswitch", "auto_switch", "auto_switch_vote", "auto_switch_metric", "auto_switch_centroid",
                       "auto_switch_per_sample", "auto_flexswitch", "auto_switch_side"]
    for r in p["rows"]:
        assert set(r["accuracy"]) == {"identity", "rot90", "invert"} and r["batch_ms"] > 0
        assert all(0 <= a <= 1 for a in r["accuracy"].values())


def test_bench_merge_individual_normalizes_to_one(payload):
    individual = next(r for r in payload[0]["rows"] if r["method"] == "individual")
    assert individual["mean_normalized"] == pytest.approx(1.0) and individual["bits_per_param"] == 32.0


def test_bench_merge_tswitch_bits_are_the_formats_bytes(payload):
    p, out = payload
    rows = {r["method"]: r for r in p["rows"]}
    suite = build_suite(TINY.suite, cache_dir=out / "cache")  # from the cache the bench wrote
    nbytes = sum(compress_task_vector(t, TINY.tswitch).nbytes for t in suite.task_vectors().values())
    assert rows["tswitch"]["bits_per_param"] == pytest.approx(8 * nbytes / p["params"] / 3)
    assert 1.4 < rows["tswitch"]["bits_per_param"]  # at least 1 mask bit + 0.4 sign bits
    for routed in ("auto_switch", "auto_switch_vote", "auto_switch_metric", "auto_switch_centroid",
                   "auto_switch_per_sample"):  # + the router's stored features
        assert rows[routed]["bits_per_param"] > rows["tswitch"]["bits_per_param"]
        assert 0 <= rows[routed]["router_accuracy"] <= 1
    assert rows["flexswitch"]["bits_per_param"] <= 1.0  # the budget, every stored byte counted
    # the side branches compute what the rebuilt weights do: the same labels, so the same accuracy
    assert rows["auto_switch_side"]["accuracy"] == pytest.approx(rows["auto_switch_centroid"]["accuracy"])
    assert rows["auto_flexswitch"]["bits_per_param"] > rows["flexswitch"]["bits_per_param"]
    assert rows["emr"]["bits_per_param"] > 1.0 and rows["pretrained"]["bits_per_param"] == 0.0


def test_bench_merge_writes_json_md_png(payload):
    p, out = payload
    assert json.loads((out / "merge_tiny.json").read_text())["rows"] == p["rows"]
    text = (out / "merge_tiny.md").read_text()
    assert "T-Switch (oracle)" in text and "Routers on single test samples" in text
    assert (out / "merge_tiny.png").stat().st_size > 0
