"""auto-round as a peer: its files are keyed by every input and made once; without its environment
the reason names ``make peers``."""

import gguf
import pytest
import torch

from sparsa.bench import autoround


def test_missing_environment_names_make_peers(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path))
    reason = autoround.missing()
    assert "auto-round 0.16.1 is not installed" in reason and "make peers" in reason and str(tmp_path) in reason


def test_file_key_changes_with_every_input(hf_dir):
    calib = torch.arange(64).reshape(2, 32)
    key = autoround.file_key(hf_dir, calib, "gguf:q4_0", 0, 0, 2)
    assert key == autoround.file_key(hf_dir, calib.clone(), "gguf:q4_0", 0, 0, 2)
    other = calib.clone()
    other[1, 5] += 1
    changed = [autoround.file_key(hf_dir, other, "gguf:q4_0", 0, 0, 2),
               autoround.file_key(hf_dir, calib, "gguf:q4_1", 0, 0, 2),
               autoround.file_key(hf_dir, calib, "gguf:q4_0", 200, 0, 2),
               autoround.file_key(hf_dir, calib, "gguf:q4_0", 0, 1, 2),
               autoround.file_key(hf_dir, calib, "gguf:q4_0", 0, 0, 1),
               autoround.file_key(hf_dir, calib.reshape(4, 16), "gguf:q4_0", 0, 0, 2)]
    (hf_dir / "config.json").write_text((hf_dir / "config.json").read_text() + " ")
    changed.append(autoround.file_key(hf_dir, calib, "gguf:q4_0", 0, 0, 2))
    assert len({key, *changed}) == len(changed) + 1


def test_quantize_without_environment_is_an_error(monkeypatch, tmp_path, hf_dir):
    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(autoround.SparsaError, match="make peers"):
        autoround.quantize(hf_dir, torch.zeros(2, 32, dtype=torch.long), "gguf:q4_0", 0, tmp_path / "x.gguf", seed=0,
                           threads=1)
    assert not (tmp_path / "x.gguf").exists()


@pytest.fixture
def smollm2_vocab_dir(smollm2_cached, tmp_path):
    """A 2-layer random Llama with SmolLM2's tokenizer: auto-round's GGUF writer knows only the
    pre-tokenizers of published models."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cached)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path / "smol-vocab"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.skipif(autoround.missing() is not None, reason="auto-round not installed (make peers)")
def test_quantize_writes_its_gguf_once_then_reuses_it(smollm2_vocab_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(autoround, "files_dir", lambda: tmp_path / "files")
    calib = torch.randint(3, 40000, (2, 32), generator=torch.Generator().manual_seed(0))
    first = autoround.quantize(smollm2_vocab_dir, calib, "gguf:q4_0", 0, tmp_path / "a.gguf", seed=0, threads=1, progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.ffn_down.weight"] == "Q4_0"

    def no_run(*args, **kwargs):
        raise AssertionError("a cached file was made again")

    monkeypatch.setattr(autoround.subprocess, "run", no_run)
    again = autoround.quantize(smollm2_vocab_dir, calib, "gguf:q4_0", 0, tmp_path / "b.gguf", seed=0, threads=1, progress=False)
    assert again == first and (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert [p.suffix for p in sorted((tmp_path / "files").iterdir())] == [".gguf", ".json"]
