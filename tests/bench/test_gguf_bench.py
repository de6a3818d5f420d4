"""``sparsa bench gguf`` on a tiny model: every row is a GGUF file scored by sparsa's protocol
(and llama.cpp's when its tools are built), rows of missing tools kept with the reason."""

from dataclasses import replace

import pytest

from conftest import word_text
from sparsa.bench import gguf as bench
from sparsa.bench import llama_cpp
from sparsa.data.corpora import Corpus
from sparsa.nn.models import LoadedModel

TEXT = " ".join(f"The {w} river runs by hill {i}." for i, w in enumerate(word_text(600).split()))


@pytest.fixture
def tiny_setup(tiny_llama, bpe_tokenizer, monkeypatch):
    real = bench.load_model
    monkeypatch.setattr(bench, "load_model", lambda spec: LoadedModel(tiny_llama, bpe_tokenizer, spec, None)
                        if spec == "tiny" else real(spec))
    corpus = Corpus("wiki", TEXT, TEXT[::-1], 2)
    monkeypatch.setattr(bench, "load_corpus", lambda name: corpus)
    monkeypatch.setattr("sparsa.compress.pipeline.load_corpus", lambda name: corpus)
    # one thread: llama-perplexity with two on a model this small often stops before its last chunk
    return bench.GgufBenchSettings(model="tiny", types=("q4_0",), nsamples=2, seqlen=32, windows=2, rounds=1,
                                   prompt_tokens=4, new_tokens=3, threads=1)


def test_bench_without_peers_scores_sparsa_files_and_names_the_missing_tools(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.llama_cpp, "missing_tools", lambda tools: "llama.cpp is not built; run `make peers`")
    monkeypatch.setattr(bench.autoround, "missing", lambda: "auto-round is not installed; run `make peers`")
    payload = bench.run_gguf_bench(replace(tiny_setup, autoround_tuned=("q4_0",)), tmp_path, progress=False)
    rows = {r["row"]: r for r in payload["rows"]}
    assert list(rows) == ["dense F32", "llama.cpp Q4_0", "llama.cpp Q4_0 + imatrix", "llama.cpp Q4_0 + imatrix --pure",
                          "auto-round Q4_0 iters 0", "auto-round Q4_0 iters 200",
                          "sparsa rtn --grid q4_0", "sparsa gptq --grid q4_0",
                          "sparsa gptq --grid q4_0 --no-error-feedback"]
    assert all(rows[r]["skipped"] == "llama.cpp is not built; run `make peers`" for r in list(rows)[1:4])
    assert all(rows[r]["skipped"] == "auto-round is not installed; run `make peers`" for r in list(rows)[4:6])
    dense = rows["dense F32"]["sparsa"]
    assert dense["kld_mean"] == 0 and dense["positions"] == 2 * 31
    for label in list(rows)[6:]:
        r = rows[label]
        assert r["tensor_types"] == {"F32": 5, "Q4_0": 14, "Q8_0": 1}  # norms; 2 layers x 7 linears; embedding
        assert r["sparsa"]["kld_mean"] > 0 and r["sparsa"]["positions"] == 62 and "llama_perplexity" not in r
    assert payload["speed"] == [] and payload["goals"] == []
    text = (tmp_path / "gguf.md").read_text()
    assert "not run: llama.cpp is not built" in text and "not run: auto-round is not installed" in text


def test_bench_widens_a_model_for_k_quants_without_changing_it(tiny_setup, tiny_llama, bpe_tokenizer, tmp_path,
                                                               monkeypatch):
    from sparsa.data.tokens import bos_for
    from sparsa.evaluate.perplexity import perplexity

    monkeypatch.setattr(bench.llama_cpp, "missing_tools", lambda tools: "not built")
    monkeypatch.setattr(bench.autoround, "missing", lambda: "not installed")
    payload = bench.run_gguf_bench(replace(tiny_setup, types=("q4_k",)), tmp_path, progress=False)
    assert payload["bases"] == {"wide": {"hidden_size": 256, "intermediate_size": 256, "heads": 16, "kv_heads": 2}}
    ours = [r for r in payload["rows"] if r["maker"] == "sparsa" and r["type"] == "q4_k"]
    assert len(ours) == 3 and all(r["tensor_types"]["Q4_K"] == 14 for r in ours)
    windows = bench.eval_windows(bench.tokenize(bpe_tokenizer, TEXT[::-1]), 32, 2, bos=bos_for(bpe_tokenizer, "auto"))
    dense = perplexity(tiny_llama, windows, progress=False).ppl  # the widened F32 file computes the same function
    assert payload["rows"][0]["sparsa"]["ppl"] == pytest.approx(dense, rel=1e-4)


@pytest.mark.skipif(llama_cpp.missing_tools(bench.TOOLS) is not None, reason="llama.cpp tools not built (make peers)")
def test_bench_with_llama_cpp_scores_every_file_by_both_protocols(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.autoround, "missing", lambda: "not installed")  # its own test below
    # llama-perplexity prints KL statistics only over 100 scored positions or more (8 x 31 here)
    payload = bench.run_gguf_bench(replace(tiny_setup, seqlen=64, windows=8), tmp_path, progress=False)
    assert [r["maker"] for r in payload["rows"] if "skipped" in r] == ["auto-round"] * 2
    for r in (r for r in payload["rows"] if "skipped" not in r):
        lp = r["llama_perplexity"]
        assert lp["ppl"] > 1 and 0 <= lp["kld_mean"] and 0 < lp["same_top"] <= 1
    assert payload["rows"][0]["llama_perplexity"]["kld_mean"] < 1e-3  # the dense file against its own logits
    rows = {r["row"]: r for r in payload["rows"]}
    assert rows["llama.cpp Q4_0 + imatrix --pure"]["tensor_types"] == rows["sparsa gptq --grid q4_0"]["tensor_types"]
    (sp,) = payload["speed"]
    assert set(sp["files"]) == {"llama.cpp Q4_0 + imatrix --pure", "sparsa gptq --grid q4_0"}
    assert all(v["decode_tokens_per_s"] > 0 for v in sp["files"].values())
    assert [g["theirs"] for g in payload["goals"]] == ["llama.cpp Q4_0 + imatrix", "llama.cpp Q4_0 + imatrix --pure"] * 2
    assert all(g["met"] == (g["ppl"][0] < g["ppl"][1] and g["tensor_bytes"][0] <= g["tensor_bytes"][1])
               for g in payload["goals"])


@pytest.mark.parametrize("flags, message", [(["--types", "q9_9"], "--types 'q9_9' is not one of"),
                                            (["--types", ","], "--types '' is not one of"),
                                            (["--autoround-tuned", "q4_0,q3"], "--autoround-tuned 'q3' is not one of")])
def test_unknown_type_is_one_line_before_any_work(flags, message, capsys, tmp_path):
    from conftest import run_cli

    code, out, err = run_cli(capsys, "bench", "gguf", *flags, "--out", str(tmp_path))
    assert code != 0 and err.startswith("sparsa: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
