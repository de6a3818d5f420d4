"""bench decode on the tiny Llama: every variant decodes, compressed ones match their reference path."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import word_text
from sparsa.bench import decode
from sparsa.bench.decode import NEAR_TIE, DecodeSettings, first_mismatch, run_decode
from sparsa.data.corpora import Corpus


@pytest.fixture
def tiny_bench(monkeypatch, tiny_llama, tiny_tokenizer):
    monkeypatch.setattr(decode, "load_model", lambda spec: SimpleNamespace(model=tiny_llama, tokenizer=tiny_tokenizer))
    monkeypatch.setattr(decode, "load_corpus", lambda name: Corpus(name, word_text(400, 1), word_text(200, 2), 2))
    return DecodeSettings(batches=(1, 2), prompt_tokens=6, new_tokens=5, match_tokens=4, nsamples=2, calib_seqlen=16,
                          rounds=3)


def test_run_decode_tiny_model_times_every_variant_and_writes_results(tiny_bench, tmp_path):
    payload = run_decode(tiny_bench, out_dir=tmp_path, progress=False)
    rows = {r["variant"]: r for r in payload["rows"]}
    assert list(rows) == list(decode.VARIANTS)
    for name, row in rows.items():
        if "skipped" in row:
            assert name == "torchao int8 weight-only"
            continue
        assert set(row["tokens_per_s"]) == {"1", "2"} and all(v > 0 for v in row["tokens_per_s"].values())
        assert len(row["tokens"]) == 4
        assert all(len(r) == tiny_bench.rounds for r in row["tokens_per_s_rounds"].values())
        assert row["tokens_per_s"]["1"] == sorted(row["tokens_per_s_rounds"]["1"])[tiny_bench.rounds // 2]
        kernels = row["kernels"]["1"]
        if name.startswith("dense"):
            assert kernels == {}  # nn.Linear, no dispatch
        else:
            assert row["reference_match"]["match"], (name, row["reference_match"])
            assert kernels and not any("linear_reference" in k for k in kernels), (name, kernels)
    assert "spqr: sparsa.kernels.cpu.llama_step.compiled_step" in rows["spqr-3"]["kernels"]["1"]  # the fused step
    assert {p.name for p in tmp_path.iterdir()} == {"decode.json", "decode.md", "decode.png"}
    assert json.loads((tmp_path / "decode.json").read_text())["settings"]["batches"] == [1, 2]
    assert "| dense fp32 | " in (tmp_path / "decode.md").read_text()


def test_first_mismatch_divergence_counts_only_at_a_near_tie():
    ref = torch.tensor([[1, 2, 3, 4]])
    same = first_mismatch(ref, ref, torch.ones(1, 4), 4)
    assert same == {"match": True, "compared": 4, "first_difference": None, "near_tie": False}
    other = torch.tensor([[1, 2, 9, 4]])
    tie = first_mismatch(other, ref, torch.tensor([[1.0, 1.0, NEAR_TIE / 2, 1.0]]), 4)
    assert tie["match"] and tie["near_tie"] and tie["first_difference"] == 2
    wrong = first_mismatch(other, ref, torch.ones(1, 4), 4)
    assert not wrong["match"] and wrong["first_difference"] == 2
    assert first_mismatch(other, ref, torch.ones(1, 4), 2)["first_difference"] is None


def test_cli_bench_decode_quick_json_reports_ratio_to_dense(tiny_bench, tmp_path, monkeypatch, capsys):
    from sparsa.cli import main

    quick = DecodeSettings(batches=(1,), prompt_tokens=6, new_tokens=4, match_tokens=3, nsamples=2, calib_seqlen=16,
                           variants=("dense fp32", "spqr-3"))
    monkeypatch.setattr(DecodeSettings, "quick", classmethod(lambda cls: quick))
    assert main(["bench", "decode", "--quick", "--json", "--quiet", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["dense fp32"]["x_dense_fp32"] == {"1": 1.0}
    assert rows["spqr-3"]["x_dense_fp32"]["1"] > 0 and rows["spqr-3"]["reference_match"]["compared"] == 3
    assert (tmp_path / "decode_quick.md").is_file()


def test_run_decode_variant_falling_back_to_the_reference_fails_the_run(tiny_bench, tmp_path, monkeypatch):
    from sparsa.errors import SparsaError
    from sparsa.kernels import dispatch

    monkeypatch.setattr(dispatch, "LINEAR_KERNELS", {})  # no fast kernel for any format
    settings = DecodeSettings(batches=(1,), prompt_tokens=6, new_tokens=3, match_tokens=2, variants=("quant-4",),
                              rounds=1)
    with pytest.raises(SparsaError, match="variant quant-4: .* fell back to the reference kernel"):
        run_decode(settings, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_run_rounds_rotates_the_order_and_keeps_every_round(monkeypatch):
    calls = []
    monkeypatch.setattr(decode, "time_variant", lambda model, ids, n: calls.append(model) or (1.0, 1.0))
    s = DecodeSettings(batches=(1,), rounds=3)
    samples = decode.run_rounds({"a": "A", "b": "B", "c": "C"}, s, torch.zeros(1, 4, dtype=torch.long), False)
    assert calls == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert all(len(v["1"]) == 3 for v in samples.values())
