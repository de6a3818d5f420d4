"""``sparsa merge CONFIG.yaml -o DIR`` end to end (in-process) on tiny safetensors models."""

import json
import math
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import last_json, run_cli
from sparsa.merge.config import TSwitchConfig
from sparsa.merge.registry import get_method
from sparsa.merge.task_vector import task_vector
from sparsa.merge.methods.tswitch import compress_task_vector
from sparsa.nn.merge_io import read_switch_bank
from sparsa.nn.safetensors_io import LazyTensors


def state(seed: int, base: dict | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {"layer.weight": (16, 8), "layer.bias": (16,), "norm.weight": (8,), "temp": ()}
    if base is None:
        return {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    return {n: base[n] + 0.1 * torch.randn(s, generator=g) for n, s in shapes.items()}


@pytest.fixture
def models(tmp_path):
    """base as a directory (model.safetensors + config.json), fine-tunes 'a' as a directory, 'b' as a file."""
    base = state(0)
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    (tmp_path / "base" / "config.json").write_text('{"model_type": "tiny"}')
    fts = {"a": state(1, base), "b": state(2, base)}
    (tmp_path / "a").mkdir()
    save_file(fts["a"], str(tmp_path / "a" / "model.safetensors"))
    save_file(fts["b"], str(tmp_path / "b.safetensors"))
    return tmp_path, base, fts


def write_config(tmp_path, **doc) -> str:
    doc = {"base_model": str(tmp_path / "base"),
           "models": [{"model": str(tmp_path / "a")}, {"model": str(tmp_path / "b.safetensors")}], **doc}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_merge_tswitch_writes_bank_equal_to_in_memory_compression(capsys, models):
    tmp_path, base, fts = models
    config = write_config(tmp_path, merge_method="tswitch", parameters={"drop_ratio": 0.5},
                          models=[{"model": str(tmp_path / "a"), "parameters": {"drop_ratio": 0.8}},
                                  {"model": str(tmp_path / "b.safetensors")}])
    code, out, _ = run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--json", "--quiet")
    assert code == 0
    r = last_json(out)
    assert set(r["tasks"]) == {"a", "b"} and r["file_bytes"] == (tmp_path / "out" / "switch.safetensors").stat().st_size
    manifest, bank = read_switch_bank(tmp_path / "out")
    for task, drop in (("a", 0.8), ("b", 0.5)):
        expect = compress_task_vector(task_vector(base, fts[task]), TSwitchConfig(drop_ratio=drop))
        assert set(bank[task].masks) == {"layer.weight", "layer.bias", "norm.weight"}
        for name, mask in expect.masks.items():
            got = bank[task].masks[name]
            assert got.meta() == mask.meta() and all(torch.equal(got.arrays()[k], v) for k, v in mask.arrays().items())
        assert torch.equal(bank[task].raw["temp"], expect.raw["temp"])
        assert r["tasks"][task]["nbytes"] == expect.nbytes
    assert bank["a"].masks["layer.weight"].nnz < bank["b"].masks["layer.weight"].nnz


@pytest.mark.parametrize("method,params", [("task_arithmetic", {"lam": 0.5}), ("ties", {"density": 0.5}),
                                           ("dare", {"p": 0.3})])
def test_merge_static_method_equals_the_method_on_whole_task_vectors(capsys, models, method, params):
    tmp_path, base, fts = models
    config = write_config(tmp_path, merge_method=method, parameters=params, dtype="float16")
    code, out, _ = run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--json", "--quiet")
    assert code == 0 and last_json(out)["tensors"] == 4
    order = list(LazyTensors(tmp_path / "base"))  # DARE draws its drops tensor by tensor in the base file's order
    taus = {t: task_vector({n: base[n] for n in order}, fts[t]) for t in ("a", "b")}
    merged = get_method(method)(taus, generator=torch.Generator().manual_seed(0), **params)
    written = load_file(str(tmp_path / "out" / "model-00001-of-00001.safetensors"))
    for name, b in base.items():
        assert written[name].dtype == torch.float16
        torch.testing.assert_close(written[name], (b + merged[name]).half())
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"model_type": "tiny"}
    assert json.loads((tmp_path / "out" / "merge.json").read_text())["merge_method"] == method


@pytest.mark.parametrize("doc,match", [
    (dict(merge_method="slerp"), "merge_method 'slerp' is not one of tswitch, dare, task_arithmetic, ties"),
    (dict(merge_method="ties", parameters={"drop_ratio": 0.5}), "parameters: unknown parameter 'drop_ratio'"),
    (dict(merge_method="tswitch", tokenizer="x"), "unknown key 'tokenizer'"),
    (dict(merge_method="tswitch", parameters={"drop_ratio": 1.5}), r"drop_ratio=1.5: must be in \[0, 1\)"),
    (dict(merge_method="tswitch", dtype="int8"), "dtype 'int8' is not one of"),
    (dict(merge_method="tswitch", base_model="/nonexistent/base"), "/nonexistent/base: no such file or directory"),
])
def test_merge_bad_config_one_line_error_nothing_written(capsys, models, doc, match):
    tmp_path, _, _ = models
    code, _, err = run_cli(capsys, "merge", write_config(tmp_path, **doc), "-o", str(tmp_path / "out"))
    assert code == 2 and err.startswith("sparsa: error:") and len(err.strip().splitlines()) == 1
    assert re.search(match, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,match", [
    (lambda s: {**s, "layer.bias": torch.zeros(4)}, r"tensor 'layer.bias' has shape \[4\], the base \[16\]"),
    (lambda s: {k: v for k, v in s.items() if k != "norm.weight"}, "tensor 'norm.weight' of the base model is missing"),
    (lambda s: {**s, "layer.bias": torch.full((16,), math.nan)}, "tensor 'layer.bias' has a non-finite"),
])
def test_merge_bad_checkpoint_names_the_tensor_nothing_written(capsys, models, change, match):
    tmp_path, _, fts = models
    save_file(change(fts["b"]), str(tmp_path / "b.safetensors"))
    code, _, err = run_cli(capsys, "merge", write_config(tmp_path, merge_method="tswitch"), "-o", str(tmp_path / "out"))
    assert code == 2 and "model 'b'" in err
    assert re.search(match, err)
    assert not (tmp_path / "out").exists()


def test_merge_refuses_a_non_merge_output_directory(capsys, models):
    tmp_path, _, _ = models
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "merge", write_config(tmp_path, merge_method="tswitch"), "-o", str(tmp_path / "out"))
    assert code == 2 and f"{tmp_path / 'out'}: holds keep.txt, which sparsa did not write" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_merge_eval_reports_bytes_and_fidelity_of_each_task(capsys, models):
    tmp_path, base, fts = models
    config = write_config(tmp_path, merge_method="tswitch")
    assert run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"), "--quiet")[0] == 0
    code, out, _ = run_cli(capsys, "merge-eval", str(tmp_path / "out"), "--json")
    assert code == 0
    r = last_json(out)
    for task in ("a", "b"):
        tau = task_vector(base, fts[task])
        hat = compress_task_vector(tau).decompress()
        t = torch.cat([tau[n].reshape(-1) for n in tau]).double()
        h = torch.cat([hat[n].reshape(-1) for n in tau]).double()
        assert r["tasks"][task]["rel_err"] == pytest.approx(float((t - h).norm() / t.norm()), rel=1e-9)
        assert r["tasks"][task]["cosine"] == pytest.approx(float(t @ h / (t.norm() * h.norm())), rel=1e-9)
        assert 0.5 < r["tasks"][task]["cosine"] < 1


def test_merge_eval_of_a_directory_that_is_no_bank_raises(capsys, tmp_path):
    code, _, err = run_cli(capsys, "merge-eval", str(tmp_path))
    assert code == 2 and "not a switch bank" in err


@pytest.mark.parametrize("doc, match", [
    (dict(merge_method="tswitch", parameters={"drop_ratio": "lots"}),
     r"merge.yaml: parameters: drop_ratio='lots' is a str; expected a finite number in \[0, 1\)"),
    (dict(merge_method="task_arithmetic", parameters={"lam": math.nan}),
     "merge.yaml: parameters: lam=nan: must be a finite number"),
    (dict(merge_method="ties", parameters={"lam": math.inf}), "parameters: lam=inf: must be a finite number"),
    (dict(merge_method="ties", parameters={"density": True}),
     r"density=True is a bool; expected a finite number in \[0, 1\]"),
    (dict(merge_method="dare", parameters={"p": -0.1}), r"parameters: p=-0.1: must be in \[0, 1\)"),
    (dict(merge_method="dare", parameters={"then": "slerp"}), "then='slerp': must be one of 'task_arithmetic', 'ties'"),
    (dict(merge_method="tswitch", parameters={"group_size": 2.5}),
     "group_size=2.5 is a float; expected an integer >= 1"),
])
def test_merge_bad_parameter_value_names_the_key_nothing_written(capsys, models, doc, match):
    tmp_path, _, _ = models
    code, out, err = run_cli(capsys, "merge", write_config(tmp_path, **doc), "-o", str(tmp_path / "out"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_merge_bad_per_model_parameter_names_the_model(capsys, models):
    tmp_path, _, _ = models
    config = write_config(tmp_path, merge_method="tswitch",
                          models=[{"model": str(tmp_path / "a"), "parameters": {"drop_ratio": "lots"}},
                                  {"model": str(tmp_path / "b.safetensors")}])
    code, _, err = run_cli(capsys, "merge", config, "-o", str(tmp_path / "out"))
    assert code == 2 and "models[0] (model 'a').parameters: drop_ratio='lots' is a str" in err
