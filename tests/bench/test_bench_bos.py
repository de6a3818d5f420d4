"""--bos in the benches that cut windows from text: bench quality's rows and calibration, bench
merge's language tasks."""

import json
from types import SimpleNamespace

import pytest
import torch

from sparsa.bench import merge_lm, quality
from sparsa.bench.merge_lm import LMSuiteSettings, LMTasks
from sparsa.bench.quality import QualitySettings, markdown
from sparsa.data.corpora import Corpus
from sparsa.errors import SparsaError
from conftest import word_text
from tiny_bos import BOS_ID, bos_tokenizer

RECORD = {"protocol": "auto", "added": True, "token_id": BOS_ID}


def small_corpus(name: str) -> Corpus:
    """A few hundred tiny-vocabulary words in place of a real corpus (tokenizing one takes seconds)."""
    return Corpus(name, calib=word_text(300, seed=1), eval=word_text(100, seed=2), documents=2)


def test_quality_row_evaluates_bos_windows_and_records_them(monkeypatch, tiny_llama, one_thread):
    monkeypatch.setattr(quality, "load_model", lambda spec: SimpleNamespace(model=tiny_llama, tokenizer=bos_tokenizer()))
    s = QualitySettings(seqlen=20, windows=2)
    row = quality.run_row("dense", None, s, {"words": word_text(100)}, None, progress=False)
    assert row["bos"] == RECORD and row["eval_windows"] == {"words": 2}
    never = quality.run_row("dense", None, QualitySettings(seqlen=20, windows=2, bos="never"),
                            {"words": word_text(100)}, None, progress=False)
    assert never["bos"]["added"] is False and never["ppl"]["words"] != pytest.approx(row["ppl"]["words"], rel=1e-3)


def test_run_quality_calibrates_on_bos_windows_and_the_report_states_the_protocol(tmp_path, monkeypatch):
    seen = {}

    def calibration(*args, bos, **kwargs):
        seen["bos"] = bos
        return torch.zeros(1, 2, dtype=torch.long)

    def row(label, config, s, texts, windows, progress):
        return {"row": label, "method": None, "compress_seconds": None, "bits_per_param": 32.0, "bytes": 1,
                "ppl": {"wiki": 2.0}, "eval_windows": {"wiki": 1}, "bos": RECORD,
                "machine": {"date": "2026-11-22", "cpu": "x86_64", "cores": 2, "torch": "2.13.0", "device": "cpu"}}

    monkeypatch.setattr(quality, "load_model", lambda spec: SimpleNamespace(tokenizer=bos_tokenizer()))
    monkeypatch.setattr(quality, "load_corpus", small_corpus)
    monkeypatch.setattr(quality, "load_texts", lambda ppl, text_file: {"wiki": word_text(100)})
    monkeypatch.setattr(quality, "calibration_windows", calibration)
    monkeypatch.setattr(quality, "run_row", row)
    payload = quality.run_quality(QualitySettings(ppl="wiki"), only=["dense"], out_dir=tmp_path, progress=False)
    assert seen["bos"].per_window and seen["bos"].token_id == BOS_ID
    assert payload["bos"] == RECORD and payload["settings"]["bos"] == "auto"
    assert json.loads((tmp_path / "quality.json").read_text())["bos"] == RECORD
    assert "BOS protocol `auto` (a BOS token added)." in (tmp_path / "quality.md").read_text()
    no_bos = {**payload, "rows": [{**payload["rows"][0], "bos": {**RECORD, "added": False, "token_id": None}}]}
    assert "BOS protocol `auto` (the tokenizer adds no BOS: none added)." in markdown(no_bos)


def test_merge_lm_tasks_windows_open_with_bos(tiny_llama, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(merge_lm, "load_corpus", small_corpus)
    tiny_llama.save_pretrained(tmp_path / "m")
    bos_tokenizer().save_pretrained(tmp_path / "m")
    settings = LMSuiteSettings(model=str(tmp_path / "m"), tuned_layers=1, seqlen=16, train_windows=2, test_windows=1,
                               steps=1, batch_size=2)
    family = LMTasks(settings)
    assert family.bos.to_dict() == RECORD
    for task in family.tasks:
        for ids in (family.train[task][1], family.test[task][1]):
            assert ids.shape[1] == 16 and (ids[:, 0] == BOS_ID).all() and BOS_ID not in ids[:, 1:].tolist()
    assert settings.key() != LMSuiteSettings(**{**settings.__dict__, "bos": "never"}).key()
    with pytest.raises(SparsaError, match="merge LM suite: bos 'always'; choose from auto, once, never"):
        LMSuiteSettings(bos="always")
