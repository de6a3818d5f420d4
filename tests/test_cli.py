"""The command-line contract: --json last line, one-line errors, nothing half-written."""

import json
import subprocess
import sys

import pytest

from sparsa.cli.model import demo_table
from conftest import last_json, word_text
from conftest import run_cli as run


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(400))
    return path


@pytest.mark.parametrize("argv, message", [
    (["compress", "M", "-o", "X", "--method", "foo"], "unknown --method 'foo'; choose from auto, gptq, magnitude, rtn, sparsegpt, spqr, wanda"),
    (["compress", "M", "-o", "X", "--method", "rtn", "--bits", "9"], "--bits 9 is outside 2..8"),
    (["compress", "M", "-o", "X", "--method", "rtn", "--bits", "1"], "--bits 1 is outside 2..8"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--sparsity", "1.0"], r"--sparsity 1.0 is outside \[0, 1\)"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--sparsity", "-0.1"], r"--sparsity -0.1 is outside"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--pattern", "2x4"], "--pattern '2x4' is not unstructured"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--pattern", "2:4", "--sparsity", "0.7"],
     "--sparsity 0.7 disagrees with --pattern 2:4"),
    (["compress", "M", "-o", "X", "--method", "rtn", "--sparsity", "0.5"], "--method rtn does not take --sparsity"),
    (["compress", "M", "-o", "X", "--method", "spqr", "--symmetric"], "--method spqr does not take --symmetric"),
    (["eval", "/no/such/model"], "MODEL '/no/such/model' is not smollm2-135m"),
    (["eval", "M", "--ppl", "ptb"], "--ppl 'ptb': unknown corpus"),
    (["eval", "x.gguf"], "x.gguf: no such GGUF file"),
    (["eval"], "the following arguments are required: model"),
    (["eval", "M", "--ppl", ""], "--ppl '': empty corpus name; give comma-separated names from wiki, shakespeare"),
    (["eval", "M", "--ppl", "wiki,"], "--ppl 'wiki,': empty corpus name; give comma-separated names from wiki"),
    (["eval", "M", "--windows", "0"], "argument --windows: got 0; expected an integer >= 1"),
    (["demo", "--ppl", "wiki,"], "--ppl 'wiki,': empty corpus name"),
    (["bench", "quality", "--ppl", ""], "--ppl '': empty corpus name"),
    (["generate", "M", "--prompt", ""], "--prompt '': empty; give the text to continue"),
    (["generate", "M", "--prompt", "hi", "--max-new-tokens", "0"],
     "argument --max-new-tokens: got 0; expected an integer >= 1"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--recover", "--recover-lr", "nan"],
     "argument --recover-lr: got nan; expected a finite number > 0"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--recover", "--recover-lr", "inf"],
     "argument --recover-lr: got inf; expected a finite number > 0"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--recover", "--recover-lr", "0"],
     "argument --recover-lr: got 0; expected a finite number > 0"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--recover", "--recover-lr", "-0.001"],
     "argument --recover-lr: got -0.001; expected a finite number > 0"),
    (["compress", "M", "-o", "X", "--method", "magnitude", "--recover", "--recover-steps", "0"],
     "argument --recover-steps: got 0; expected an integer >= 1"),
    (["bench", "encoder", "--recover-steps", "-1"], "argument --recover-steps: got -1; expected an integer >= 1"),
])
def test_cli_bad_input_prints_one_error_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("sparsa: error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err


def test_cli_compress_then_eval_json_contract(capsys, hf_dir, words, tmp_path):
    code, out, _ = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", "rtn", "--bits", "4",
                       "--group-size", "32", "--json", "--quiet")
    result = last_json(out)
    assert code == 0 and set(result) >= {"dir", "method", "bits_per_param", "bytes", "seconds"}
    assert result["bits_per_param"] == 5.0 and result["method"] == "rtn"
    code, out, _ = run(capsys, "eval", str(tmp_path / "ck"), "--text-file", str(words), "--seqlen", "64", "--json",
                       "--quiet")
    result = last_json(out)
    assert code == 0 and set(result) >= {"ppl", "bits_per_param", "bytes", "params"}
    assert result["bits_per_param"] == 5.0 and result["windows"] == {str(words): 6}
    assert 1 < result["ppl"][str(words)] < 1e4
    code, out, _ = run(capsys, "eval", str(hf_dir), "--text-file", str(words), "--seqlen", "64", "--json", "--quiet")
    assert last_json(out)["bits_per_param"] == 32.0


def test_cli_compress_symmetric_writes_4_5_bits_and_loads_back(capsys, hf_dir, words, tmp_path):
    """``--symmetric`` at 4 bits, g32: GGUF Q4_0's grid, no minimum stored, 4.5 bits per weight."""
    code, out, _ = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", "rtn", "--bits", "4",
                       "--group-size", "32", "--symmetric", "--json", "--quiet")
    assert code == 0 and last_json(out)["bits_per_param"] == 4.5
    formats = json.loads((tmp_path / "ck" / "sparsa.json").read_text())["formats"]
    assert formats and all(f["meta"]["symmetric"] is True for f in formats.values())
    code, out, _ = run(capsys, "eval", str(tmp_path / "ck"), "--text-file", str(words), "--seqlen", "64", "--json",
                       "--quiet")
    result = last_json(out)
    assert code == 0 and result["bits_per_param"] == 4.5 and 1 < result["ppl"][str(words)] < 1e4


def test_cli_eval_text_too_short_errors(capsys, hf_dir, tmp_path):
    (tmp_path / "short.txt").write_text("w1 w2 w3")
    code, _, err = run(capsys, "eval", str(hf_dir), "--text-file", str(tmp_path / "short.txt"), "--seqlen", "64")
    assert code == 2 and "short.txt: 3 tokens, fewer than one window of --seqlen 64" in err


def test_cli_compress_refuses_foreign_directory_and_writes_nothing(capsys, hf_dir, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
    code, _, err = run(capsys, "compress", str(hf_dir), "-o", str(target), "--method", "rtn", "--group-size", "32")
    assert code == 2 and f"{target}: holds thesis.tex, which sparsa did not write" in err
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]


def test_cli_compress_bad_nm_pattern_leaves_no_output(capsys, hf_dir, tmp_path):
    code, _, err = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", "magnitude",
                       "--pattern", "2:3", "--quiet")
    assert code == 2 and "in_features=64 is not a multiple of M=3" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-hf"]


@pytest.mark.parametrize("prompt, new, message", [
    ("w1 w2 w3", "254", "--prompt of 3 tokens + --max-new-tokens 254 = 257 tokens exceeds the model's context of "
                        "256 tokens; lower --max-new-tokens to 253 or shorten the prompt"),
    (" ".join(["w1"] * 300), "1", "--prompt of 300 tokens + --max-new-tokens 1 = 301 tokens exceeds the model's "
                                  "context of 256 tokens; shorten the prompt"),
    ("   ", "4", "--prompt: the text tokenizes to no tokens"),
])
def test_cli_generate_prompt_past_context_or_without_tokens_names_the_lengths(capsys, hf_dir, prompt, new, message):
    code, out, err = run(capsys, "generate", str(hf_dir), "--prompt", prompt, "--max-new-tokens", new)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert message in err, err


@pytest.mark.slow
def test_cli_generate_smollm2_prompt_past_its_context_names_the_lengths(capsys, smollm2_cached):
    code, out, err = run(capsys, "generate", "smollm2-135m", "--prompt", "Once upon a time", "--max-new-tokens", "8190")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--prompt of 4 tokens + --max-new-tokens 8190 = 8194 tokens exceeds the model's context of 8192" in err


def test_cli_generate_reports_text_and_speed(capsys, hf_dir):
    code, out, _ = run(capsys, "generate", str(hf_dir), "--prompt", "w1 w2", "--max-new-tokens", "4", "--json")
    result = last_json(out)
    assert code == 0 and result["new_tokens"] == 4 and result["tokens_per_s"] > 0 and isinstance(result["text"], str)


def test_cli_truncated_checkpoint_fails_without_traceback(capsys, hf_dir, tmp_path):
    assert run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", "magnitude", "--quiet")[0] == 0
    shard = next((tmp_path / "ck").glob("model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])
    proc = subprocess.run([sys.executable, "-m", "sparsa", "eval", str(tmp_path / "ck")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sparsa: error: ") and proc.stderr.count("\n") == 1
    assert shard.name in proc.stderr and "truncated" in proc.stderr


def test_demo_table_lists_each_row_with_its_numbers():
    rows = [{"model": "dense", "ppl": {"wiki": 15.2921}, "bytes": 1000, "bits_per_param": 32.0, "seconds": None},
            {"model": "rtn", "ppl": {"wiki": 15.5}, "bytes": 156, "bits_per_param": 5.0, "seconds": 0.94}]
    header, rule, dense, rtn = demo_table({"rows": rows}).splitlines()
    assert header.split() == ["model", "ppl", "wiki", "bytes", "bits/param", "compress", "s"]
    assert set(rule) == {"-"}
    assert dense.split() == ["dense", "15.292", "1,000", "32.000", "-"]
    assert rtn.split() == ["rtn", "15.500", "156", "5.000", "0.9"]


@pytest.mark.parametrize("method, extra", [("gptq", ["--group-size", "32"]), ("spqr", []), ("sparsegpt", []),
                                           ("wanda", ["--pattern", "2:4"])])
def test_cli_calibrated_methods_compress_and_report_block_errors(capsys, hf_dir, tmp_path, method, extra):
    code, out, err = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", method,
                         "--nsamples", "2", "--seqlen", "16", "--json", "--quiet", *extra)
    assert code == 0, err
    result = last_json(out)
    assert result["method"] == method and len(result["block_errors"]) == 2
    manifest = json.loads((tmp_path / "ck" / "sparsa.json").read_text())
    assert manifest["method"]["nsamples"] == 2 and manifest["method"]["seed"] == 0


@pytest.mark.parametrize("method,flags,head", [("spqr", [], True), ("spqr", ["--no-head"], False),
                                               ("rtn", [], True), ("magnitude", [], False),
                                               ("magnitude", ["--head"], True)])
def test_cli_compress_head_by_default_for_quantizers_and_on_request(capsys, hf_dir, tmp_path, method, flags, head):
    calibration = ["--nsamples", "2", "--seqlen", "16"] if method == "spqr" else []
    code, out, err = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", method,
                         *calibration, "--json", "--quiet", *flags)
    assert code == 0, err
    result = last_json(out)
    assert result["head"] is head and result["layers"] == (15 if head else 14)
    manifest = json.loads((tmp_path / "ck" / "sparsa.json").read_text())
    assert ("lm_head" in json.dumps(manifest)) is head


def test_cli_calibration_too_short_errors_before_compressing(capsys, hf_dir, tmp_path):
    code, _, err = run(capsys, "compress", str(hf_dir), "-o", str(tmp_path / "ck"), "--method", "gptq",
                       "--nsamples", "100000", "--seqlen", "512")
    assert code == 2 and "wiki calibration split:" in err and "fewer than --nsamples 100000" in err
    assert not (tmp_path / "ck").exists()


def test_cli_bench_spmm_quick_json_reports_ratios_and_skipped_peers(capsys, tmp_path, monkeypatch):
    from sparsa.bench import spmm

    tiny = spmm.SpmmSettings(cases=((32, 32, 5),), sparsities=(0.9,), rounds=1, min_seconds=0.0)
    monkeypatch.setattr(spmm.SpmmSettings, "quick", classmethod(lambda cls: tiny))
    code, out, _ = run(capsys, "bench", "spmm", "--quick", "--json", "--quiet", "--out", str(tmp_path))
    result = last_json(out)
    assert code == 0 and result["quick"] is True
    assert result["ratios"][0]["case"] == "32x32 tokens=5 sparsity=90%"
    assert result["ratios"][0]["ours fp32 1x16 / dense fp32"] > 0
    assert set(result["skipped"]) <= {"torch ao sparse int8 1x4", "ours int8 4x1"}
    assert (tmp_path / "spmm_quick.json").is_file() and not (tmp_path / "spmm.json").exists()


def device_commands():
    """(command words, argv filling its required arguments) of every command that takes --device."""
    from conftest import all_parsers

    for path, parser in all_parsers():
        options = {s for a in parser._actions for s in a.option_strings}
        if "--device" not in options:
            continue
        argv = list(path)
        for action in parser._actions:
            if action.required and not action.option_strings:
                argv.append("X")
            elif action.required:
                argv += [action.option_strings[-1], "rtn" if action.dest == "method" else "X"]
        yield pytest.param(argv, id=" ".join(path))


@pytest.mark.parametrize("argv", list(device_commands()))
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0"])
def test_cli_device_not_cpu_or_cuda_is_one_error_line_on_every_command(capsys, argv, device):
    code, out, err = run(capsys, *argv, "--device", device)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"sparsa: error: --device '{device}': not a device; use cpu, cuda or cuda:N"), err


def test_cli_device_commands_cover_every_device_flag():
    names = {" ".join(p.values[0][: 2 if p.values[0][0] in ("bench", "attention") else 1]) for p in device_commands()}
    assert names == {"eval", "compress", "generate", "ba", "sfm", "bench quality", "attention eval"}


@pytest.fixture
def bos_hf_dir(tiny_llama, tmp_path):
    """The tiny Llama with a tokenizer that adds BOS (id 123) by default, as a Hugging Face dir."""
    from tiny_bos import bos_tokenizer

    path = tmp_path / "tiny-bos-hf"
    tiny_llama.save_pretrained(path)
    bos_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("protocol, windows, record", [
    ("auto", 400 // 19, {"protocol": "auto", "added": True, "token_id": 123}),
    ("once", 401 // 20, {"protocol": "once", "added": True, "token_id": 123}),
    ("never", 400 // 20, {"protocol": "never", "added": False, "token_id": None}),
])
def test_cli_eval_bos_records_the_protocol_and_its_windows(capsys, bos_hf_dir, words, protocol, windows, record):
    code, out, err = run(capsys, "eval", str(bos_hf_dir), "--text-file", str(words), "--seqlen", "20",
                         "--bos", protocol, "--json", "--quiet")
    assert code == 0, err
    result = last_json(out)
    assert result["bos"] == record and result["windows"] == {str(words): windows}
    assert result["predicted_tokens"] == {str(words): windows * 19}


def test_cli_eval_bos_defaults_to_auto_and_a_tokenizer_without_bos_adds_none(capsys, hf_dir, bos_hf_dir, words):
    code, out, _ = run(capsys, "eval", str(bos_hf_dir), "--text-file", str(words), "--seqlen", "20", "--quiet")
    assert code == 0 and "bos            auto (BOS token 123 opens every window)" in out
    code, out, _ = run(capsys, "eval", str(hf_dir), "--text-file", str(words), "--seqlen", "20", "--json", "--quiet")
    assert code == 0 and last_json(out)["bos"] == {"protocol": "auto", "added": False, "token_id": None}


def test_cli_compress_bos_calibration_is_recorded_in_result_and_manifest(capsys, bos_hf_dir, tmp_path):
    code, out, err = run(capsys, "compress", str(bos_hf_dir), "-o", str(tmp_path / "ck"), "--method", "gptq",
                         "--group-size", "32", "--nsamples", "2", "--seqlen", "16", "--json", "--quiet")
    assert code == 0, err
    record = {"protocol": "auto", "added": True, "token_id": 123}
    assert last_json(out)["bos"] == record
    assert json.loads((tmp_path / "ck" / "sparsa.json").read_text())["method"]["bos"] == record
    code, out, err = run(capsys, "compress", str(bos_hf_dir), "-o", str(tmp_path / "rtn"), "--method", "rtn",
                         "--group-size", "32", "--json", "--quiet")
    assert code == 0 and last_json(out)["bos"] is None  # no calibration text, no BOS


def test_cli_bos_unknown_protocol_is_one_error_line(capsys):
    code, out, err = run(capsys, "eval", "M", "--bos", "always")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "argument --bos: invalid choice: 'always' (choose from 'auto', 'once', 'never')" in err, err
