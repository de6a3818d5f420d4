"""bench quality: rows, merging into earlier results, and the written files."""

import json

from sparsa.bench import quality
from sparsa.bench.quality import QualitySettings, markdown, previous_rows, quality_rows


def test_quality_rows_cover_the_report():
    labels = [label for label, _ in quality_rows(QualitySettings())]
    for needed in ("dense", "rtn-3 g128", "gptq-4 g128", "spqr-3 recipe (tau0.3 damp0.01)", "spqr-4 recipe (tau0.2 damp1.0)",
                   "magnitude 50%", "wanda 2:4", "sparsegpt 4:8", "sparsegpt 50% + 4-bit g128", "auto 3.5"):
        assert needed in labels
    calibrated = [c for _, c in quality_rows(QualitySettings(nsamples=7)) if c is not None and c.needs_calibration]
    assert calibrated and all(c.nsamples == 7 for c in calibrated)


H100 = {"date": "2026-11-21", "cpu": "x86_64", "cores": 16, "torch": "2.11.0+cu130", "device": "cuda",
        "gpu": "NVIDIA H100 80GB HBM3"}
CPU = {"date": "2026-11-22", "cpu": "x86_64", "cores": 2, "torch": "2.13.0", "device": "cpu"}


def fake_row(label, config, s, texts, windows, progress):
    return {"row": label, "method": None, "compress_seconds": None, "bits_per_param": 4.0, "bytes": 1,
            "ppl": {"wiki": float(len(label))}, "eval_windows": {"wiki": 1},
            "machine": H100 if s.device == "cuda" else CPU}


def test_run_quality_rows_merge_into_same_settings_only(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(quality, "run_row", fake_row)
    monkeypatch.setattr(quality, "load_model", lambda spec: SimpleNamespace(tokenizer=tiny_tokenizer))
    monkeypatch.setattr(quality, "calibration_windows", lambda *a, **k: torch.zeros(1, 2, dtype=torch.long))
    quality.run_quality(QualitySettings(ppl="wiki", device="cuda"), only=["dense", "gptq-4"], out_dir=tmp_path,
                        progress=False)
    quality.run_quality(QualitySettings(ppl="wiki"), only=["auto"], out_dir=tmp_path, progress=False)
    payload = json.loads((tmp_path / "quality.json").read_text())
    assert [r["row"] for r in payload["rows"]] == ["dense", "gptq-4 g128", "auto 3.5"]
    assert [r["machine"]["device"] for r in payload["rows"]] == ["cuda", "cuda", "cpu"]
    assert "device" not in payload["settings"]
    assert {p.name for p in tmp_path.iterdir()} == {"quality.json", "quality.md", "quality.png"}
    text = (tmp_path / "quality.md").read_text()
    assert "| gptq-4 g128 | 4.000 | 11.000 | - | H100 80GB HBM3 |" in text
    assert "| auto 3.5 | 4.000 | 8.000 | - | 2-core CPU |" in text
    assert previous_rows(tmp_path, QualitySettings(ppl="wiki", seqlen=512)) == []
    assert len(previous_rows(tmp_path, QualitySettings(ppl="wiki", device="cuda"))) == 3


def test_markdown_names_every_machine_and_the_protocol():
    s = QualitySettings()
    payload = {"settings": s.protocol(), "rows": [fake_row("dense", None, s, None, None, None),
                                                  fake_row("gptq-4 g128", None, QualitySettings(device="cuda"),
                                                           None, None, None)]}
    text = markdown(payload)
    assert ("Measured 2026-11-22 on 2-core x86_64 CPU (torch 2.13.0) (2-core CPU); "
            "2026-11-21 on NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130) (H100 80GB HBM3).") in text
    assert "128 x 2048 tokens" in text
