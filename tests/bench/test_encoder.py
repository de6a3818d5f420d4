"""bench encoder on a tiny BERT: every variant timed and compared, results written, missing peers named."""

import json
import sys

import pytest

from conftest import word_sentences
from sparsa.bench import encoder as bench
from sparsa.bench.encoder import DENSE, ORT, EncoderSettings, run_encoder


@pytest.fixture
def tiny_bench(monkeypatch, tiny_encoder):
    monkeypatch.setattr(bench, "load_encoder", lambda spec: tiny_encoder)
    monkeypatch.setattr(bench, "corpus_sentences", lambda name, held_out: (word_sentences(32), word_sentences(held_out, 1)))
    return EncoderSettings(batches=(1, 2), seqlen=16, sparsities=(0.5,), block=(1, 4), recover_steps=3,
                           recover_lr=1e-3, recover_batch_size=4, held_out=12, k=3, rounds=2, min_seconds=0.0)


def test_run_encoder_tiny_model_times_every_variant_and_writes_results(tiny_bench, tmp_path):
    payload = run_encoder(tiny_bench, out_dir=tmp_path, name="encoder_quick", quick=True, progress=False)
    rows = {r["variant"]: r for r in payload["rows"]}
    assert list(rows) == [DENSE, ORT, "ours block 50%"]
    for name, row in rows.items():
        if "skipped" in row:
            assert name == ORT, row
            continue
        assert set(row["ms"]) == {"1", "2"} and all(v > 0 for v in row["ms"].values())
        assert set(row["agreement"]) == {"cosine_mean", "cosine_min", "topk_overlap", "k", "sentences"}
    if "skipped" not in rows[ORT]:  # onnxruntime installed: same embeddings as torch
        assert rows[ORT]["agreement"]["cosine_min"] > 0.9999
    assert rows[DENSE]["x_dense"] == {"1": 1.0, "2": 1.0} and rows[DENSE]["agreement"]["topk_overlap"] == 1.0
    assert rows["ours block 50%"]["recovery"]["steps"] == 3
    assert payload["goal"] == {"variant": "ours block 90%", "met": None}
    assert {p.name for p in tmp_path.iterdir()} == {"encoder_quick.json", "encoder_quick.md", "encoder_quick.png"}
    assert json.loads((tmp_path / "encoder_quick.json").read_text())["settings"]["batches"] == [1, 2]
    md = (tmp_path / "encoder_quick.md").read_text()
    assert "**Quick run**: sparsities 50% only, 3 recovery steps" in md
    assert "| dense torch fp32 | " in md and "| ours block 50% | " in md and "Goal: ours block 90%" in md


def test_run_encoder_without_onnxruntime_reports_why(tiny_bench, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    payload = run_encoder(tiny_bench, out_dir=tmp_path, progress=False)
    ort = next(r for r in payload["rows"] if r["variant"] == ORT)
    assert ort == {"variant": ORT, "skipped": "onnxruntime is not installed (pip install onnxruntime==1.31.1)"}
    assert "| onnxruntime fp32 | n/a | n/a | n/a | n/a | not run: onnxruntime is not installed" in (
        tmp_path / "encoder.md").read_text()


def test_cli_bench_encoder_quick_json_reports_goal_and_rows(tiny_bench, tmp_path, monkeypatch, capsys):
    from sparsa.cli import main

    monkeypatch.setattr(EncoderSettings, "quick", classmethod(lambda cls: tiny_bench))
    assert main(["bench", "encoder", "--quick", "--recover-steps", "2", "--json", "--quiet", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["name"] == "encoder_quick" and result["goal"]["met"] is None
    assert [r["variant"] for r in result["rows"]] == [DENSE, ORT, "ours block 50%"]
    written = json.loads((tmp_path / "encoder_quick.json").read_text())
    assert written["settings"]["recover_steps"] == 2 and written["quick"] is True
