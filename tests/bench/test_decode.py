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
    return DecodeSettings(batches=(1, 2), prompt_tokens=6, new_tokens=5, match_tokens=4, nsamples=2, calib_seqlen=16)


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
        if not name.startswith("dense"):
            assert row["reference_match"]["match"], (name, row["reference_match"])
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
