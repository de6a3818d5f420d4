"""``sparsa merge`` with the methods that need samples (FlexSwitch's training data) and with a
``router:`` block (Auto-Switch), and ``sparsa merge-eval --inputs``, on a tiny random Llama saved
as Hugging Face directories: every result equals the same computation done in memory."""

import re

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import last_json, run_cli
from sparsa.merge.config import FlexSwitchConfig, RouterSpec
from sparsa.merge.methods.flexswitch import flexswitch
from sparsa.merge.router import CentroidRouter, KNNRouter, MetricKNNRouter
from sparsa.merge.routing import build_router, load_router
from sparsa.merge.task_vector import task_vector
from sparsa.nn.merge_io import read_router_arrays, read_switch_bank
from sparsa.nn.task_data import CausalLM, read_samples

VOCAB, T = 64, 12


@pytest.fixture(scope="module")
def lm_models(tmp_path_factory):
    """base, fine-tunes 'a' and 'b' (directories), token windows per task (a: ids 2..31, b: 32..63)
    and separable features per task."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    for task in ("a", "b"):
        with torch.no_grad():
            tuned = LlamaForCausalLM(config).eval()
            tuned.load_state_dict(model.state_dict())
            for p in tuned.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        tuned.save_pretrained(root / task)
    lows = {"a": 2, "b": 32}
    for task, low in lows.items():
        save_file({"input_ids": torch.randint(low, low + 30, (10, T), generator=g)}, str(root / f"{task}.ids"))
        centre = torch.full((8,), 5.0 if task == "a" else -5.0)
        save_file({"features": centre + torch.randn(10, 8, generator=g)}, str(root / f"{task}.features"))
    return root


def write(root, tmp_path, **doc) -> str:
    doc = {"base_model": str(root / "base"), "models": [{"model": str(root / "a")}, {"model": str(root / "b")}],
           **doc}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def state(path) -> dict:
    return load_file(str(path / "model.safetensors"))


def test_flexswitch_with_data_equals_the_in_memory_compression(capsys, lm_models, tmp_path):
    root = lm_models
    params = {"budget_bits": 2.0, "steps": 3, "batch_size": 4}
    config = write(root, tmp_path, merge_method="flexswitch", parameters=params,
                   models=[{"model": str(root / "a"), "parameters": {"data": str(root / "a.ids")}},
                           {"model": str(root / "b"), "parameters": {"data": str(root / "b.ids"), "steps": 0}}])
    code, out, err = run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--json", "--quiet")
    assert code == 0, err
    r = last_json(out)
    _, bank = read_switch_bank(tmp_path / "out")
    base = {n: t.float() for n, t in state(root / "base").items()}
    lm = CausalLM(root / "base", list(base))
    for task, steps in (("a", 3), ("b", 0)):
        ids = read_samples(root / f"{task}.ids").input_ids
        expect, _ = flexswitch(base, task_vector(base, state(root / task)), lm.loss(ids, 4, task),
                               FlexSwitchConfig(budget_bits=2.0, steps=steps))
        assert r["tasks"][task]["nbytes"] == expect.nbytes and r["tasks"][task]["bits_per_param"] <= 2.0
        for name, mask in expect.masks.items():
            got = bank[task].masks[name]
            assert got.meta() == mask.meta() and all(torch.equal(got.arrays()[k], v) for k, v in mask.arrays().items())


def test_flexswitch_same_command_same_bytes(capsys, lm_models, tmp_path):
    root = lm_models
    config = write(root, tmp_path, merge_method="flexswitch",
                   parameters={"budget_bits": 1.0, "steps": 2, "data": str(root / "a.ids")})
    files = []
    for out in ("one", "two"):
        assert run_cli(capsys, "merge", config, "-o", str(tmp_path / out), "--quiet")[0] == 0
        files.append((tmp_path / out / "switch.safetensors").read_bytes())
    assert files[0] == files[1]


@pytest.mark.parametrize("doc, match", [
    (dict(merge_method="flexswitch"),
     r"models\[0\] \(model 'a'\): flexswitch trains on the task's samples; give parameters: \{data: PATH\}"),
    (dict(merge_method="flexswitch", parameters={"data": "/nonexistent/x.ids"}), "/nonexistent/x.ids: no such sample"),
    (dict(merge_method="flexswitch", parameters={"data": "FEATURES"}), "holds features; this needs input_ids"),
    (dict(merge_method="flexswitch", parameters={"data": ""}), "data='': must be a non-empty string"),
    (dict(merge_method="tswitch", parameters={"data": "x"}), "unknown parameter 'data'"),
    (dict(merge_method="task_arithmetic", router={"kind": "knn", "query_set": {"a": "x", "b": "y"}}),
     "router: routes between the tasks of a switch bank"),
    (dict(merge_method="tswitch", router={"kind": "knn", "query_set": {"a": "x"}}),
     r"router: query_set must map each model's task name \(a, b\)"),
    (dict(merge_method="tswitch", router={"kind": "forest", "query_set": {"a": "x", "b": "y"}}),
     "router: kind='forest': must be one of 'knn', 'metric_knn', 'centroid'"),
    (dict(merge_method="tswitch", router={"kind": "knn", "k": 0, "query_set": {"a": "x", "b": "y"}}),
     "router: k=0: must be >= 1"),
])
def test_bad_data_or_router_one_line_error_nothing_written(capsys, lm_models, tmp_path, doc, match):
    root = lm_models
    if doc.get("parameters", {}).get("data") == "FEATURES":
        doc["parameters"]["data"] = str(root / "a.features")
    code, out, err = run_cli(capsys, "merge", write(root, tmp_path, **doc), "-o", str(tmp_path / "out"))
    assert code == 2 and out == "" and err.startswith("sparsa: error:") and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_token_ids_outside_the_vocabulary_name_the_file(capsys, lm_models, tmp_path):
    root = lm_models
    save_file({"input_ids": torch.full((2, T), VOCAB)}, str(tmp_path / "big.ids"))
    doc = dict(merge_method="flexswitch", parameters={"data": str(tmp_path / "big.ids")})
    code, _, err = run_cli(capsys, "merge", write(root, tmp_path, **doc), "-o", str(tmp_path / "out"))
    assert code == 2 and f"{tmp_path / 'big.ids'}: tensor 'input_ids' holds id {VOCAB}, outside the vocabulary" in err
    assert not (tmp_path / "out").exists()


def test_routed_tswitch_stores_the_router_built_from_base_features(capsys, lm_models, tmp_path):
    root = lm_models
    router = {"kind": "knn", "k": 3, "samples_per_task": 6,
              "query_set": {"a": str(root / "a.ids"), "b": str(root / "b.ids")}}
    config = write(root, tmp_path, merge_method="tswitch", router=router)
    code, out, err = run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--json", "--quiet")
    assert code == 0, err
    r = last_json(out)
    assert r["router"]["kind"] == "knn" and r["router"]["samples"] == {"a": 6, "b": 6}
    base = state(root / "base")
    lm = CausalLM(root / "base", list(base))
    features = {t: lm.features(base, read_samples(root / f"{t}.ids").input_ids[:6]) for t in ("a", "b")}
    expect = build_router(RouterSpec.from_dict(router, ["a", "b"], "test"), features)
    stored = read_router_arrays(tmp_path / "out")
    assert set(stored) == set(KNNRouter.ARRAYS) and r["router"]["nbytes"] == expect.nbytes
    assert torch.equal(stored["features"], expect.features) and torch.equal(stored["labels"], expect.labels)

    code, out, err = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"a={root / 'a.ids'}",
                             "--inputs", f"b={root / 'b.ids'}", "--json")
    assert code == 0, err
    e = last_json(out)
    for i, task in enumerate(("a", "b")):
        ids = read_samples(root / f"{task}.ids").input_ids
        x = lm.features(base, ids)
        row = e["tasks"][task]
        assert row["samples"] == 10
        assert row["routed_share"] == pytest.approx(float((expect.route(x) == i).float().mean()))
        assert row["batch_weights"] == pytest.approx(dict(zip(("a", "b"), expect.batch_weights(x).tolist())))
        assert set(row["perplexity"]) == {"base", "finetuned", "switch", "routed"}
        assert row["perplexity"]["finetuned"] == pytest.approx(lm.perplexity(state(root / task), ids), rel=1e-6)
        assert all(1 < v < 10 * VOCAB for v in row["perplexity"].values())


@pytest.mark.parametrize("kind, cls", [("knn", KNNRouter), ("metric_knn", MetricKNNRouter),
                                       ("centroid", CentroidRouter)])
def test_routed_bank_on_stored_features_routes_each_task_home(capsys, lm_models, tmp_path, kind, cls):
    root = lm_models
    router = {"kind": kind, "k": 3, "rank": 2, "metric_steps": 20,
              "query_set": {"a": str(root / "a.features"), "b": str(root / "b.features")}}
    config = write(root, tmp_path, merge_method="tswitch", router=router)
    assert run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--quiet")[0] == 0
    assert set(read_router_arrays(tmp_path / "out")) == set(cls.ARRAYS)
    code, out, err = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"a={root / 'a.features'}",
                             "--inputs", f"b={root / 'b.features'}", "--json")
    assert code == 0, err
    e = last_json(out)
    assert e["router"]["kind"] == kind
    for task in ("a", "b"):  # clusters at +5 and -5 in every coordinate: every sample goes home
        assert e["tasks"][task]["routed_share"] == 1.0
        assert e["tasks"][task]["batch_weights"][task] == 1.0
        assert "perplexity" not in e["tasks"][task]


@pytest.mark.parametrize("kind", ["knn", "metric_knn", "centroid"])
def test_a_stored_router_routes_as_the_one_built(kind):
    g = torch.Generator().manual_seed(0)
    features = {t: torch.randn(12, 6, generator=g) + shift for t, shift in (("x", 1.0), ("y", -1.0), ("z", 0.0))}
    spec = RouterSpec.from_dict({"kind": kind, "k": 4, "rank": 3, "metric_steps": 10, "batch_mode": "vote",
                                 "query_set": {"x": "-", "y": "-", "z": "-"}}, ["x", "y", "z"], "test")
    built = build_router(spec, features)
    loaded = load_router(spec.to_dict(), built.arrays(), 3)
    probe = torch.randn(20, 6, generator=g)
    assert torch.equal(built.route(probe), loaded.route(probe))
    assert torch.equal(built.batch_weights(probe), loaded.batch_weights(probe))
    assert loaded.nbytes == built.nbytes


def test_merge_eval_inputs_for_an_unknown_task_or_bad_pair(capsys, lm_models, tmp_path):
    root = lm_models
    assert run_cli(capsys, "merge", write(root, tmp_path, merge_method="tswitch"), "-o", str(tmp_path / "out"),
                   "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"c={root / 'a.ids'}")
    assert code == 2 and "--inputs: task 'c' is not in" in err
    code, _, err = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", "a")
    assert code == 2 and "expected TASK=FILE" in err


def test_merge_and_merge_eval_print_their_brief_summaries(capsys, lm_models, tmp_path):
    root = lm_models
    router = {"kind": "centroid", "query_set": {"a": str(root / "a.features"), "b": str(root / "b.features")}}
    code, out, _ = run_cli(capsys, "merge", write(root, tmp_path, merge_method="tswitch", router=router),
                           "-o", str(tmp_path / "out"), "--quiet")
    assert code == 0
    assert out.splitlines()[0] == f"wrote {tmp_path / 'out'} (tswitch)"
    assert re.search(r"^  router centroid: \d+ bytes, query samples a 10, b 10$", out, re.M)
    code, _, err = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"b={root / 'b.ids'}")
    assert code == 2 and f"b={root / 'b.ids'}: holds input_ids; the router of {tmp_path / 'out'} was built on features" in err
    code, out, _ = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"b={root / 'b.features'}")
    assert code == 0
    assert re.search(r"^  a +\d+ bytes  [\d.]+ bits/param  rel_err [\d.]+  cosine [\d.]+$", out, re.M)
    assert re.search(r"^ +10 samples  routed here 100%$", out, re.M)
    assert re.search(r"^  router centroid: \d+ bytes, query samples a 10, b 10$", out, re.M)


def test_token_window_bank_eval_prints_perplexities(capsys, lm_models, tmp_path):
    root = lm_models
    assert run_cli(capsys, "merge", write(root, tmp_path, merge_method="tswitch"), "-o", str(tmp_path / "out"),
                   "--quiet")[0] == 0
    code, out, _ = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--inputs", f"a={root / 'a.ids'}")
    assert code == 0
    assert re.search(r"^ +10 samples  ppl base [\d.]+  ppl finetuned [\d.]+  ppl switch [\d.]+$", out, re.M)
