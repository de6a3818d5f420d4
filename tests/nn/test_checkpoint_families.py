"""Checkpoint round trips on every decoder family transformers builds from a tiny config: a reload
never drops, re-initializes or mis-ties a tensor (issue 18, section 5)."""

import pytest
import torch
import transformers

from conftest import tiny_decoder
from sparsa.compress import compress_, get_method
from sparsa.errors import SparsaError
from sparsa.nn import SparseLinear
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint

# family id -> (config class, model class, config overrides)
FAMILIES = {
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "llama-untied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    # one sliding (window 4 < the 16 test tokens) and one global layer, two rotary bases
    "gemma3-tied": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    {"head_dim": 16, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
                     "tie_word_embeddings": True}),
    "gemma3-untied": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                      {"head_dim": 16, "sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"],
                       "tie_word_embeddings": False}),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-untied": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "tie_word_embeddings": False}),
    "mistral-untied": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4, "tie_word_embeddings": False}),
    "phi3-tied": ("Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": True}),
}
IDS = torch.tensor([[3, 17, 5, 99, 42, 8, 120, 64, 1, 0, 77, 31, 9, 2, 56, 127]])  # 16 tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str):
    """A seeded random tiny model of ``family``, fp32, eval mode."""
    return tiny_decoder(*FAMILIES[family])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def rtn8(model) -> dict:
    """Compress ``model`` in place with RTN 8-bit, groups of 32; return the method dict."""
    config = get_method("rtn").config_cls.from_flags(bits=8, group_size=32)
    compress_(model, config, progress=False)
    return config.to_dict()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compressed", [True, False], ids=["rtn8", "dense"])
def test_checkpoint_family_reloads_bit_exactly(family, compressed, tiny_tokenizer, tmp_path):
    model = build(family)
    method = rtn8(model) if compressed else {}
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method=method)
    loaded, _, manifest = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(model))
    assert (len(manifest["formats"]) > 0) == compressed
    assert any(isinstance(m, SparseLinear) for m in loaded.modules()) == compressed
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(reloaded[name], tensor), name
    for name, buffer in model.named_buffers():  # non-persistent ones too (rotary, embedding scale)
        assert torch.equal(loaded.get_buffer(name), buffer), name
    tied = model.config.tie_word_embeddings
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("family", ["gemma3-tied", "llama-untied"])
def test_checkpoint_family_missing_tensor_raises_naming_it(family, tiny_tokenizer, tmp_path, monkeypatch):
    from sparsa.nn import checkpoint as ckpt

    model = build(family)
    real = ckpt.unique_tensors
    monkeypatch.setattr(ckpt, "unique_tensors",
                        lambda m: {k: v for k, v in real(m).items() if k != "model.embed_tokens.weight"})
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method={})
    with pytest.raises(SparsaError, match=f"{tmp_path / 'ck'}: tensor model.embed_tokens.weight is missing"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_family_tied_weight_stored_under_tie_source(tiny_tokenizer, tmp_path):
    import json

    model = build("gemma3-tied")
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method={})
    stored = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored


def test_unique_tensors_shared_tensor_keeps_tie_source_name():
    from sparsa.nn.checkpoint import unique_tensors

    model = build("llama-tied")
    assert "lm_head.weight" not in unique_tensors(model)
    model._tied_weights_keys = {"model.embed_tokens.weight": "lm_head.weight"}  # an architecture tying the other way
    kept = unique_tensors(model)
    assert "lm_head.weight" in kept and "model.embed_tokens.weight" not in kept


def test_checkpoint_buffer_the_init_does_not_compute_raises_naming_it(tiny_tokenizer, tmp_path, monkeypatch):
    model = build("llama-tied")
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method={})
    monkeypatch.setattr(transformers.LlamaForCausalLM, "_init_weights", lambda self, module: None)
    with pytest.raises(SparsaError, match=f"{tmp_path / 'ck'}: buffer model.rotary_emb.inv_freq is not in the "
                                          "checkpoint and the model's init does not compute it"):
        load_checkpoint(tmp_path / "ck")
