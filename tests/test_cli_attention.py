"""``sparsa attention eval|bench`` and ``--attention anchor`` on eval/generate: the CLI contract."""

import pytest
import torch

from conftest import last_json, word_text
from conftest import run_cli as run
from sparsa.bench.attention import NO_CUDA

SMALL = ["--block-m", "4", "--step", "2", "--init", "4", "--window", "0"]


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(600))
    return path


@pytest.fixture
def short(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(word_text(50))
    return path


def test_cli_attention_eval_json_reports_recall_density_error(capsys, hf_dir, words):
    code, out, _ = run(capsys, "attention", "eval", str(hf_dir), "--text-file", str(words), "--seqlen", "96",
                       "--theta", "2", *SMALL, "--json", "--quiet")
    r = last_json(out)
    assert code == 0 and r["theta"] == 2.0 and r["seqlen"] == 96 and "layers" not in r
    assert 0 < r["density"] <= 1 and 0 < r["recall"] <= 1 and r["rel_err"] >= 0
    assert set(r["overall"]) == {"anchor", "vertical_slash", "flex_blocks", "streaming", "per_row_topk", "optimum"}
    assert r["overall"]["optimum"]["density"] == r["density"] and r["overall"]["optimum"]["recall"] <= 1 + 1e-9
    assert all(m["gap_to_optimum"] >= -1e-6 for name, m in r["overall"].items() if name != "optimum")


def test_attention_eval_table_shows_the_bounds_and_each_gap():
    from sparsa.cli.attention import attention_eval_table

    overall = {"anchor": {"recall": 0.97, "density": 0.28, "gap_to_optimum": 0.0123, "rel_err": 0.05,
                          "close_share": 0.9},
               "per_row_topk": {"recall": 0.984, "density": 0.2801, "gap_to_optimum": 0.0018},
               "optimum": {"recall": 0.9823, "density": 0.28}}
    text = attention_eval_table({"model": "m", "seqlen": 96, "text": "t", "theta": 4.0, "selection_seconds": 0.1,
                                 "overall": overall})
    lines = text.splitlines()
    assert lines[1].split() == ["selector", "recall", "density", "gap", "rel_err", "|dO|<1e-2"]
    assert lines[2].split() == ["anchor", "0.9700", "0.2800", "0.0123", "0.0500", "0.9000"]
    assert lines[3].split() == ["per_row_topk", "0.9840", "0.2801", "0.0018", "-", "-"]
    assert lines[4].split() == ["optimum", "0.9823", "0.2800", "-", "-", "-"]


def test_cli_attention_eval_sweep_writes_the_plot(capsys, hf_dir, words, tmp_path):
    out_dir = tmp_path / "res"
    code, out, _ = run(capsys, "attention", "eval", str(hf_dir), "--text-file", str(words), "--seqlen", "64",
                       *SMALL, "--sweep", "--no-baselines", "--layers", "--out", str(out_dir), "--json", "--quiet")
    r = last_json(out)
    assert code == 0 and len(r["layers"]) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == [f"attention_sweep.{e}" for e in ("json", "md", "png")]
    densities = [row["anchor"]["density"] for row in r["sweep"]["rows"]]
    assert densities == sorted(densities)  # a larger theta keeps more


@pytest.mark.parametrize("argv, message", [
    (["attention", "eval", "{hf}", "--text-file", "{words}", "--seqlen", "100000"], "exceeds the model's context"),
    (["attention", "eval", "{hf}", "--text-file", "{short}", "--seqlen", "100"], "fewer than --seqlen 100"),
    (["attention", "eval", "{hf}", "--text-file", "{words}", "--step", "0"], "step=0 must be at least 1"),
    (["attention", "eval", "{hf}", "--text-file", "{words}", "--theta", "nan"], "theta must be a number"),
    (["eval", "{hf}", "--text-file", "{words}", "--theta", "4"], "--theta applies only with --attention anchor"),
])
def test_cli_attention_bad_input_one_line_error(capsys, hf_dir, words, short, argv, message):
    code, out, err = run(capsys, *(a.format(hf=hf_dir, words=words, short=short) for a in argv), "--quiet")
    assert code == 2 and out == ""
    assert err.startswith("sparsa: error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture
def long_hf_dir(tiny_tokenizer, tmp_path):
    """A tiny random Llama with a 2048-token context: room for stripes past the default window."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
    path = tmp_path / "long-hf"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_cli_eval_attention_anchor_reports_it_and_theta_inf_matches_dense(capsys, long_hf_dir, tmp_path):
    words = tmp_path / "many.txt"
    words.write_text(word_text(1100))
    args = ["eval", str(long_hf_dir), "--text-file", str(words), "--seqlen", "1024", "--json", "--quiet"]
    dense = last_json(run(capsys, *args)[1])
    code, out, _ = run(capsys, *args, "--attention", "anchor", "--theta", "inf")
    r = last_json(out)
    assert code == 0 and r["attention"]["implementation"] == "anchor"
    assert r["attention"]["theta"] is None and r["non_finite"] == ["attention.theta"]  # JSON has no inf
    assert r["ppl"][str(words)] == pytest.approx(dense["ppl"][str(words)], rel=1e-5)
    code, out, _ = run(capsys, *args, "--attention", "anchor", "--theta=-inf")
    assert code == 0 and last_json(out)["ppl"][str(words)] != pytest.approx(dense["ppl"][str(words)], rel=1e-5)


def test_cli_generate_attention_anchor_runs(capsys, hf_dir):
    code, out, _ = run(capsys, "generate", str(hf_dir), "--prompt", "w1 w2 w3", "--max-new-tokens", "3",
                       "--attention", "anchor", "--json")
    r = last_json(out)
    assert code == 0 and r["new_tokens"] == 3 and r["attention"]["implementation"] == "anchor"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip is for machines without CUDA")
def test_cli_attention_bench_without_cuda_exits_0_with_a_skip(capsys, tmp_path):
    code, out, _ = run(capsys, "attention", "bench", "--json", "--out", str(tmp_path))
    assert code == 0 and last_json(out) == {"skipped": NO_CUDA} and not any(tmp_path.iterdir())
