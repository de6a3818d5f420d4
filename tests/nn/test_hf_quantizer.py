"""sparsa checkpoints through transformers: ``from_pretrained`` after ``import sparsa`` gives the
logits ``load_checkpoint`` gives for every format and decoder family, ``save_pretrained`` writes
the same bytes, and a bad checkpoint fails naming the tensor."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import tiny_decoder
from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.errors import SparsaError
from sparsa.nn import SparseLinear, sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint
from sparsa.nn.hf_quantizer import QUANT_METHOD

CONFIGS = {"quant": RTNConfig(bits=4, group_size=32), "quant-sym3": RTNConfig(bits=3, group_size=64, symmetric=True),
           "bitmap": MagnitudeConfig(sparsity=0.5), "nm": MagnitudeConfig(pattern="2:4"),
           "block": MagnitudeConfig(sparsity=0.7, pattern="block:4x1"),
           "spqr": SpQRConfig(bits=3, stat_group_size=16, nsamples=2, seqlen=16)}
IDS = torch.tensor([[3, 17, 5, 99, 42, 8, 120, 64, 1, 0, 77, 31, 9, 2, 56, 127]])


def checkpoint(model, tokenizer, config, path):
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    compress_(model, config, calibration=windows if isinstance(config, SpQRConfig) else None, progress=False)
    save_checkpoint(model, tokenizer, path, method=config.to_dict())
    return path


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("name", CONFIGS)
def test_from_pretrained_logits_equal_load_checkpoint(name, tiny_llama, tiny_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, tiny_tokenizer, CONFIGS[name], tmp_path / "ck")
    assert json.loads((path / "config.json").read_text())["quantization_config"]["quant_method"] == QUANT_METHOD
    hf = AutoModelForCausalLM.from_pretrained(path)
    ours, _, manifest = load_checkpoint(path)
    assert {fqn for fqn, _ in sparse_linears(hf)} == set(manifest["formats"])
    assert torch.equal(logits(hf), logits(ours))
    for (fqn, a), (_, b) in zip(sparse_linears(hf), sparse_linears(ours), strict=True):
        for array, tensor in b.weight_format.arrays().items():
            got = getattr(a, array)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), f"{fqn}.{array}"
    assert hf.lm_head.weight is hf.model.embed_tokens.weight


@pytest.mark.parametrize("family", [("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
                                    ("Gemma3TextConfig", "Gemma3ForCausalLM",
                                     {"head_dim": 16, "sliding_window": 4, "tie_word_embeddings": True,
                                      "layer_types": ["sliding_attention", "full_attention"]}),
                                    ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "tie_word_embeddings": False}),
                                    ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True})],
                         ids=["llama-untied", "gemma3-tied", "qwen3-untied", "qwen2-biased"])
def test_from_pretrained_other_families(family, tiny_tokenizer, tmp_path):
    model = tiny_decoder(*family)
    path = checkpoint(model, tiny_tokenizer, RTNConfig(bits=8, group_size=32), tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(path)
    assert any(isinstance(m, SparseLinear) for m in hf.modules())
    assert torch.equal(logits(hf), logits(load_checkpoint(path)[0]))


def test_save_pretrained_writes_the_same_bytes(tiny_llama, tiny_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, tiny_tokenizer, CONFIGS["quant"], tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(path)
    hf.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == \
        (path / "model-00001-of-00001.safetensors").read_bytes()
    assert (tmp_path / "copy" / "config.json").read_bytes() == (path / "config.json").read_bytes()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert torch.equal(logits(again), logits(hf))


def test_from_pretrained_in_bfloat16_keeps_the_stored_format_dtypes(tiny_llama, tiny_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, tiny_tokenizer, CONFIGS["quant"], tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    q = hf.model.layers[0].self_attn.q_proj
    assert (q.codes.dtype, q.scale.dtype, hf.model.embed_tokens.weight.dtype) == \
        (torch.uint8, torch.float16, torch.bfloat16)
    assert logits(hf).dtype == torch.bfloat16


def rewrite(path, edit):
    shard = path / "model-00001-of-00001.safetensors"
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["model.layers.0.mlp.up_proj.scale"].view(-1)[0].fill_(float("nan")),
     r"model.layers.0.mlp.up_proj.*scale"),
    (lambda t: t.pop("model.layers.1.self_attn.o_proj.codes"),
     "tensor model.layers.1.self_attn.o_proj.codes is missing"),
    (lambda t: t["model.norm.weight"].view(-1)[2].fill_(float("inf")), "tensor model.norm.weight holds 1 NaN/inf"),
    (lambda t: t.pop("model.layers.0.input_layernorm.weight"),
     "tensor model.layers.0.input_layernorm.weight is missing from the checkpoint"),
], ids=["nan-scale", "missing-codes", "inf-dense", "missing-dense"])
def test_from_pretrained_corrupt_checkpoint_names_the_tensor(edit, match, tiny_llama, tiny_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, tiny_tokenizer, CONFIGS["quant"], tmp_path / "ck")
    rewrite(path, edit)
    with pytest.raises(SparsaError, match=match):
        AutoModelForCausalLM.from_pretrained(path)


def test_import_sparsa_does_not_import_transformers():
    code = "import sys, sparsa; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
