"""``sparsa compress --recover``: clear errors for misuse, nothing written; a tiny encoder end to end."""

import json

import pytest

from conftest import word_sentences
from sparsa.cli import main

RECOVER = ["--method", "magnitude", "--pattern", "block:1x4", "--sparsity", "0.5", "--recover"]


@pytest.mark.parametrize("argv, message", [
    (["smollm2-135m", *RECOVER], "MODEL 'smollm2-135m' is not a sentence encoder"),
    (["all-minilm-l6-v2", "--method", "magnitude", "--pattern", "2:4", "--recover"],
     "--recover needs --pattern block:RxC (e.g. block:1x16), not 2:4"),
    (["all-minilm-l6-v2", "--method", "rtn", "--recover"], "use --method magnitude, not rtn"),
    (["all-minilm-l6-v2", "--method", "magnitude", "--pattern", "block:1x16", "--recover-steps", "5"],
     "--recover-steps and --recover-lr apply only with --recover"),
    (["all-minilm-l6-v2", *RECOVER, "--head"], "--head applies to causal LMs"),
])
def test_cli_compress_bad_recover_use_one_line_error_nothing_written(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", argv[0], "-o", str(out), *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("sparsa: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_compress_recover_causal_directory_raises(tiny_llama, tmp_path, capsys):
    tiny_llama.save_pretrained(tmp_path / "hf")
    with pytest.raises(SystemExit):
        main(["compress", str(tmp_path / "hf"), "-o", str(tmp_path / "out"), *RECOVER])
    assert "LlamaForCausalLM is a causal LM, not a sentence encoder" in capsys.readouterr().err


def test_cli_compress_recover_tiny_encoder_writes_loadable_checkpoint(tiny_encoder, tmp_path, monkeypatch, capsys):
    from sparsa.compress import pipeline
    from sparsa.data import sentences
    from sparsa.nn.encoders import embed, load_encoder

    tiny_encoder.model.save_pretrained(tmp_path / "hf")
    tiny_encoder.tokenizer.save_pretrained(tmp_path / "hf")
    monkeypatch.setattr(sentences, "corpus_sentences", lambda name, n: (word_sentences(32), word_sentences(n, 1)))
    monkeypatch.setattr(pipeline, "HELD_OUT_SENTENCES", 16)
    out = tmp_path / "ck"
    assert main(["compress", str(tmp_path / "hf"), "-o", str(out), *RECOVER, "--recover-steps", "3",
                 "--recover-lr", "1e-3", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recover = result["recover"]
    assert result["layers"] == 12 and recover["steps"] == 3 and recover["sentences"] == 16 and recover["k"] == 10
    assert 0 < recover["cosine_min"] <= recover["cosine_mean"] <= 1 and 0 <= recover["topk_overlap"] <= 1
    loaded = load_encoder(str(out))
    assert loaded.manifest["method"]["recover"]["sparsity"] == 0.5
    assert embed(loaded, ["w1 w2 w3"]).shape == (1, 32)
