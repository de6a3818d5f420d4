"""bench decode on the tiny Llama: every variant decodes, compressed ones match their reference path."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import word_text
from sparsa.bench import decode
from sparsa.bench.decode import NEAR_TIE, DecodeSettings, first_mismatch, match_verdict, run_decode
from sparsa.data.corpora import Corpus


@pytest.fixture
def tiny_bench(monkeypatch, tiny_llama, tiny_tokenizer):
    monkeypatch.setattr(decode, "load_model", lambda spec: SimpleNamespace(model=tiny_llama, tokenizer=tiny_tokenizer))
    monkeypatch.setattr(decode, "load_corpus", lambda name: Corpus(name, word_text(400, 1), word_text(200, 2), 2))
    return DecodeSettings(batches=(1, 2), prompt_tokens=6, new_tokens=5, match_tokens=4, nsamples=2, calib_seqlen=16,
                          rounds=3, threads=(1,), llama_cpp=(), long_prompt_tokens=12)


def test_run_decode_tiny_model_times_every_variant_and_writes_results(tiny_bench, tmp_path):
    payload = run_decode(tiny_bench, out_dir=tmp_path, progress=False)
    rows = {r["variant"]: r for r in payload["rows"]}
    assert list(rows) == list(decode.VARIANTS)
    for name, row in rows.items():
        if "skipped" in row:
            assert name == "torchao int8 weight-only"
            continue
        assert set(row["tokens_per_s"]) == {"b1t1", "b2t1"} and all(v > 0 for v in row["tokens_per_s"].values())
        assert set(row["prompt_tokens_per_s"]) == {"b1t1"} and row["prompt_tokens_per_s"]["b1t1"] > 0
        assert len(row["tokens"]) == 4
        assert all(len(r) == tiny_bench.rounds for r in row["tokens_per_s_rounds"].values())
        assert row["tokens_per_s"]["b1t1"] == sorted(row["tokens_per_s_rounds"]["b1t1"])[tiny_bench.rounds // 2]
        assert row["long_prompt_tokens_per_s"] > 0
        if name.startswith("torchao"):  # no compiled step: no bytes counted, no floor
            assert "bytes_per_token" not in row and "x_floor" not in row
        else:  # the step's bytes, and a floor from the bandwidth measured in the run
            assert row["bytes_per_token"] > 0 and row["floor_tokens_per_s"] == pytest.approx(
                payload["bandwidth_gb_per_s"] * 1e9 / row["bytes_per_token"])
            assert row["x_floor"] == pytest.approx(row["tokens_per_s"]["b1t1"] / row["floor_tokens_per_s"])
        kernels = row["kernels"]["1"]
        if name in ("dense fp32", "dense bf16"):  # nn.Linear, no dispatch: the step's dense kernel, the head included
            assert kernels == {"dense: sparsa.kernels.cpu.llama_step.compiled_step": 15}
        elif name.startswith("torchao"):  # with `make peers`: torchao's own weight subclass, not our dispatch
            assert kernels == {} and row["reference_match"]["match"]
        else:
            assert row["reference_match"]["match"], (name, row["reference_match"])
            assert kernels and not any("linear_reference" in k for k in kernels), (name, kernels)
    step = "sparsa.kernels.cpu.llama_step.compiled_step"  # formats with a compiled kernel decode in one call
    for name, fmt in [("spqr-3", "spqr"), ("quant-4", "quant"), ("quant-4 sym", "quant"), ("bitmap-50%", "bitmap"),
                      ("nm-2:4", "nm"), ("block-70%", "block")]:
        assert f"{fmt}: {step}" in rows[name]["kernels"]["1"], (name, rows[name]["kernels"])
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


def test_match_verdict_names_the_step_the_gap_and_the_fp32_activation_check():
    ref, other = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 9, 4]])
    gaps = torch.tensor([[1.0, 1.0, 0.04, 1.0]])
    wrong = first_mismatch(other, ref, gaps, 4)
    assert match_verdict(None) == "-" and match_verdict(first_mismatch(ref, ref, gaps, 4)) == "yes"
    assert match_verdict(wrong) == "NO: step 2 (top-2 gap 0.040)"
    wrong["fp32_activations"] = first_mismatch(ref, ref, gaps, 4)
    assert match_verdict(wrong) == "NO: step 2 (top-2 gap 0.040); fp32 activations: yes"


def test_cli_bench_decode_quick_json_reports_ratio_to_dense(tiny_bench, tmp_path, monkeypatch, capsys):
    from sparsa.cli import main

    quick = DecodeSettings(batches=(1,), prompt_tokens=6, new_tokens=4, match_tokens=3, nsamples=2, calib_seqlen=16,
                           variants=("dense fp32", "spqr-3"), threads=(1,), llama_cpp=())
    monkeypatch.setattr(DecodeSettings, "quick", classmethod(lambda cls: quick))
    assert main(["bench", "decode", "--quick", "--json", "--quiet", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["dense fp32"]["x_dense_fp32"] == {"b1t1": 1.0}
    assert rows["spqr-3"]["x_dense_fp32"]["b1t1"] > 0 and rows["spqr-3"]["reference_match"]["compared"] == 3
    assert (tmp_path / "decode_quick.md").is_file()


def test_run_decode_variant_falling_back_to_the_reference_fails_the_run(tiny_bench, tmp_path, monkeypatch):
    from sparsa.errors import SparsaError
    from sparsa.kernels import dispatch

    monkeypatch.setattr(dispatch, "LINEAR_KERNELS", {})  # no fast kernel for any format
    settings = DecodeSettings(batches=(1,), prompt_tokens=6, new_tokens=3, match_tokens=2, variants=("quant-4",),
                              rounds=1, threads=(1,), llama_cpp=())
    with pytest.raises(SparsaError, match="variant quant-4: .* fell back to the reference kernel"):
        run_decode(settings, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_run_rounds_rotates_the_order_and_keeps_every_round(monkeypatch):
    calls = []
    monkeypatch.setattr(decode, "time_variant", lambda model, ids, n: calls.append(model) or (1.0, 1.0, 1.0))
    monkeypatch.setattr(decode, "time_llama_cpp", lambda gguf, threads, s: calls.append(gguf) or (1.0, 1.0, 1.0))
    s = DecodeSettings(batches=(1, 2), rounds=3, threads=(1,))
    samples = decode.run_rounds({"a": "A", "b": "B"}, {"c": "C"}, s, torch.zeros(1, 4, dtype=torch.long),
                                torch.zeros(1, 0, dtype=torch.long), False)  # no long prompt
    assert calls == ["A", "A", "B", "B", "C", "B", "B", "C", "A", "A", "C", "A", "A", "B", "B"]  # C: batch 1 only
    assert all(len(v["b1t1"]) == 3 for v in samples.values()) and "b2t1" not in samples["c"]


FAKE_LLAMA_BENCH = """#!{python}
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
opt = dict(zip(args[::2], args[1::2]))
ts = 100.0 if opt["-n"] != "0" else 900.0
print(json.dumps([{{"avg_ts": ts, "build_commit": "abc1234", "build_number": 42, "n_prompt": int(opt["-p"]),
                   "n_gen": int(opt["-n"])}}]))
"""
FAKE_LLAMA_QUANTIZE = """#!{python}
import sys
open(sys.argv[3], "w").write("fake " + sys.argv[4])
"""


def test_run_decode_times_llama_cpp_in_the_same_rounds(tiny_bench, tmp_path, monkeypatch):
    import sys
    from dataclasses import replace

    from sparsa.bench import llama_cpp

    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path / "cache"))
    tools, log = llama_cpp.tools_dir(), tmp_path / "argv.log"
    tools.mkdir(parents=True)
    for name, text in (("llama-bench", FAKE_LLAMA_BENCH), ("llama-quantize", FAKE_LLAMA_QUANTIZE)):
        (tools / name).write_text(text.format(python=sys.executable, log=str(log)))
        (tools / name).chmod(0o755)
    (tools.parent / "cpu-flags").write_text(llama_cpp.cpu_flags() + "\n")
    settings = replace(tiny_bench, variants=("dense fp32",), llama_cpp=("Q4_0", "Q4_1"), rounds=3)
    payload = run_decode(settings, out_dir=tmp_path / "out", progress=False)
    rows = {r["variant"]: r for r in payload["rows"]}
    assert rows["llama.cpp Q4_0"]["tokens_per_s"] == {"b1t1": 100.0}  # batch 1 only
    assert rows["llama.cpp Q4_0"]["prompt_tokens_per_s"] == {"b1t1": 900.0}
    assert payload["llama_cpp"] == {"version": llama_cpp.VERSION, "build": "abc1234 (b42)"}
    calls = log.read_text().splitlines()
    q4_0 = str(llama_cpp.gguf_file("Q4_0"))
    assert (f"-m {q4_0} -t 1 -p 0 -n 4 -r 1 -o json -d 7" in calls  # 4 steps on a context of 7 = prompt 6 + 1
            and f"-m {q4_0} -t 1 -p 6 -n 0 -r 1 -o json" in calls and f"-m {q4_0} -t 1 -p 12 -n 0 -r 1 -o json" in calls)
    # Q4_1 (the shipped file): decode, prompt and long prompt each round
    assert sum(f"-m {llama_cpp.smollm2_gguf()} " in c for c in calls) == 3 * settings.rounds
    assert rows["llama.cpp Q4_0"]["long_prompt_tokens_per_s"] == 900.0
    gguf_bytes = llama_cpp.gguf_file("Q4_0").stat().st_size
    assert gguf_bytes < rows["llama.cpp Q4_0"]["bytes_per_token"] < gguf_bytes + 10**6  # the file, and an f16 cache
    md = (tmp_path / "out" / "decode.md").read_text()
    assert "| llama.cpp Q4_0 | 100.0 |" in md and "llama.cpp abc1234 (b42)" in md


def test_run_decode_without_llama_cpp_says_why_in_its_rows(tiny_bench, tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path / "empty"))
    payload = run_decode(replace(tiny_bench, variants=("dense fp32",), llama_cpp=("Q8_0",), rounds=1),
                         out_dir=tmp_path / "out", progress=False)
    row = payload["rows"][-1]
    assert row["variant"] == "llama.cpp Q8_0" and "run `make peers`" in row["skipped"]
    assert "llama_cpp" not in payload and payload["rows"][0]["tokens_per_s"]["b1t1"] > 0


def test_llama_cpp_built_for_another_cpu_is_not_run(tmp_path, monkeypatch):
    from sparsa.bench import llama_cpp

    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path))
    llama_cpp.tools_dir().mkdir(parents=True)
    for name in ("llama-bench", "llama-quantize"):
        (llama_cpp.tools_dir() / name).write_text("")
    (llama_cpp.tools_dir().parent / "cpu-flags").write_text("flags : fpu another_cpu\n")
    assert "built for another CPU" in llama_cpp.missing_tools()
    (llama_cpp.tools_dir().parent / "cpu-flags").write_text(llama_cpp.cpu_flags() + "\n")
    assert llama_cpp.missing_tools() is None


def test_parse_llama_bench_names_unreadable_output():
    from sparsa.bench.llama_cpp import parse_llama_bench
    from sparsa.errors import SparsaError

    good = parse_llama_bench('[{"avg_ts": 12.5, "build_commit": "0c1e570", "build_number": 7}]')
    assert (good.tokens_per_s, good.build_commit, good.build_number) == (12.5, "0c1e570", 7)
    for bad in ("not json", "[]", '[{"avg_ts": 1}]'):
        with pytest.raises(SparsaError, match="llama-bench printed output sparsa cannot read"):
            parse_llama_bench(bad)
