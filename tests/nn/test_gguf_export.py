"""``sparsa export CKPT --to gguf``: every exported tensor decodes (gguf package) to exactly the
checkpoint's weight, transformers loads the file to the checkpoint's logits, and bad input is one
line with nothing written."""

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import last_json, run_cli
from sparsa.compress import GPTQConfig, MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.errors import SparsaError
from sparsa.nn import sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint
from sparsa.nn.gguf_export import export_gguf, rotary_rows

IDS = torch.tensor([[3, 17, 5, 99, 42, 8, 120, 64, 1, 0, 77, 31, 9, 2, 56, 127]])


def checkpoint(model, tokenizer, config, path):
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    calibrated = isinstance(config, (GPTQConfig, SpQRConfig))
    compress_(model, config, calibration=windows if calibrated else None, progress=False)
    save_checkpoint(model, tokenizer, path, method=config.to_dict())
    return path


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


GRIDS = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("method", [RTNConfig, GPTQConfig], ids=["rtn", "gptq"])
def test_every_exported_tensor_decodes_to_the_checkpoint_weight(grid, method, tiny_llama, bpe_tokenizer, tmp_path):
    config = method(grid=grid) if method is RTNConfig else method(grid=grid, nsamples=2, seqlen=16)
    path = checkpoint(tiny_llama, bpe_tokenizer, config, tmp_path / "ck")
    summary = export_gguf(path, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert summary.file_bytes == (tmp_path / "m.gguf").stat().st_size
    model, _, _ = load_checkpoint(path)
    stored = {t.name: t for t in reader.tensors}
    c = model.config
    for i, layer in enumerate(model.model.layers):
        for hf, name, heads in (("self_attn.q_proj", "attn_q", c.num_attention_heads),
                                ("self_attn.k_proj", "attn_k", c.num_key_value_heads),
                                ("self_attn.v_proj", "attn_v", None), ("mlp.down_proj", "ffn_down", None)):
            fmt = layer.get_submodule(hf).weight_format
            t = stored[f"blk.{i}.{name}.weight"]
            assert t.tensor_type.name == grid.upper() and t.n_bytes == fmt.nbytes
            dense = gguf.quants.dequantize(t.data, t.tensor_type)
            want = fmt.to_dense()
            if heads:
                want = want[rotary_rows(want.shape[0], heads)]
            assert np.array_equal(dense, want.numpy()), f"blk.{i}.{name}"
    assert np.array_equal(stored["token_embd.weight"].data, model.model.embed_tokens.weight.detach().numpy())


# the exported architectures: llama (Q/K rows permuted to ggml's rotary order), qwen2 (Q/K/V biases)
# and qwen3 (Q/K norms; head width 128, Qwen3Config's default: transformers reads no key_length from
# a qwen3 GGUF), tied and untied heads
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
            "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 128, "tie_word_embeddings": False})}


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_the_gguf_to_the_checkpoint_logits(family, bpe_tokenizer, tmp_path):
    from conftest import tiny_decoder

    model = tiny_decoder(*FAMILIES[family])
    for name, p in model.named_parameters():  # random biases and norms, so a misplaced row shows
        if name.endswith(("bias", "norm.weight")):
            p.data.normal_(0, 0.5 if name.endswith("bias") else 1.0)
    path = checkpoint(model, bpe_tokenizer, RTNConfig(grid="q8_0"), tmp_path / "ck")
    summary = export_gguf(path, tmp_path / "m.gguf")
    assert summary.architecture == family and summary.tensor_types["Q8_0"] == 14
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    assert type(from_gguf) is type(model)
    torch.testing.assert_close(logits(from_gguf), logits(load_checkpoint(path)[0]), rtol=1e-5, atol=1e-5)


def test_eval_of_the_gguf_counts_its_stored_bytes_as_the_checkpoint_does(tiny_llama, bpe_tokenizer, tmp_path,
                                                                         monkeypatch):
    from sparsa.nn import linear_footprint
    from sparsa.nn.models import load_model

    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path / "cache"))
    path = checkpoint(tiny_llama, bpe_tokenizer, RTNConfig(grid="q4_0"), tmp_path / "ck")
    export_gguf(path, tmp_path / "m.gguf")
    params, nbytes = load_model(str(tmp_path / "m.gguf")).stored
    assert (params, nbytes) == linear_footprint(load_checkpoint(path)[0]) and 8 * nbytes / params == 4.5
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(SparsaError, match="bad.gguf: not a readable GGUF file"):
        load_model(str(tmp_path / "bad.gguf"))


def test_llama_q_and_k_biases_go_out_in_the_rotary_order_of_their_rows(bpe_tokenizer, tmp_path):
    """transformers' GGUF config drops a llama's attention_bias, so the biases are checked as stored."""
    from conftest import tiny_decoder

    model = tiny_decoder("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "tie_word_embeddings": True})
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.normal_()
    path = checkpoint(model, bpe_tokenizer, RTNConfig(grid="q8_0"), tmp_path / "ck")
    export_gguf(path, tmp_path / "m.gguf")
    stored = {t.name: t.data for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    attn = model.model.layers[1].self_attn
    for name, bias, heads in (("attn_q", attn.q_proj.bias, 4), ("attn_k", attn.k_proj.bias, 2),
                              ("attn_v", attn.v_proj.bias, None), ("attn_output", attn.o_proj.bias, None)):
        want = bias.detach() if heads is None else bias.detach()[rotary_rows(len(bias), heads)]
        assert np.array_equal(stored[f"blk.1.{name}.bias"], want.numpy()), name


def test_unsupported_format_is_named_or_dequantized(tiny_llama, bpe_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, bpe_tokenizer, MagnitudeConfig(pattern="2:4"), tmp_path / "ck")
    with pytest.raises(SparsaError, match=r"model.layers.0.self_attn.q_proj.weight: nm has no ggml type"):
        export_gguf(path, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    summary = export_gguf(path, tmp_path / "m.gguf", dequantize_unsupported="f16")
    assert summary.tensor_types["F16"] == len(list(sparse_linears(load_checkpoint(path)[0])))


def test_a_quant_off_the_ggml_grid_is_named(tiny_llama, bpe_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, bpe_tokenizer, RTNConfig(bits=4, group_size=64), tmp_path / "ck")
    with pytest.raises(SparsaError, match=r"model.layers.0.self_attn.q_proj.weight: Quant bits 4, group size 64"):
        export_gguf(path, tmp_path / "m.gguf")


def test_cli_export_json_and_bad_input(capsys, tiny_llama, bpe_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, bpe_tokenizer, RTNConfig(grid="q4_0"), tmp_path / "ck")
    code, out, _ = run_cli(capsys, "export", str(path), "--to", "gguf", "-o", str(tmp_path / "m.gguf"), "--json")
    assert code == 0 and last_json(out)["tensor_types"]["Q4_0"] == 14  # 2 blocks x 7 linears (the head stays tied)
    code, _, err = run_cli(capsys, "export", str(path), "--to", "gguf", "-o", str(tmp_path / "m.gguf"))
    assert code == 2 and "m.gguf: exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nothing"), "--to", "gguf", "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and "no such checkpoint directory" in err and not (tmp_path / "x.gguf").exists()


def test_an_architecture_gguf_cannot_name_is_refused(tiny_tokenizer, tmp_path):
    from conftest import tiny_decoder

    model = tiny_decoder("Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": False})
    path = checkpoint(model, tiny_tokenizer, RTNConfig(grid="q8_0"), tmp_path / "ck")
    with pytest.raises(SparsaError, match="a Phi3ForCausalLM; GGUF export writes LlamaForCausalLM, Qwen2ForCausalLM"):
        export_gguf(path, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("flags, match", [(dict(grid="q4_0", bits=8), "--grid q4_0 sets --bits 4"),
                                          (dict(grid="q4_k", bits=8), "--grid q4_k sets --bits 4 --group-size 32"),
                                          (dict(grid="q3"), "is not one of")])
def test_bad_grids_are_refused(flags, match):
    with pytest.raises(SparsaError, match=match):
        RTNConfig(**flags)


def test_q8_0_grid_takes_ggml_scale_rule():
    W = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    fmt = compress_rtn(W, RTNConfig(grid="q8_0"))
    assert torch.equal(fmt.scale, (W.reshape(4, 2, 32).abs().amax(-1) / 127).half())
    assert (fmt.bits, fmt.group_size, fmt.symmetric) == (8, 32, True)


def compress_rtn(W, config):
    from sparsa.compress.rtn import rtn

    return rtn(W, config, where="w")


def test_dense_type_q8_0_quantizes_the_embedding_as_the_gguf_package_does(tiny_llama, bpe_tokenizer, tmp_path):
    path = checkpoint(tiny_llama, bpe_tokenizer, RTNConfig(grid="q4_0"), tmp_path / "ck")
    export_gguf(path, tmp_path / "m.gguf", dense_type="q8_0")
    t = next(t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors if t.name == "token_embd.weight")
    embedding = load_checkpoint(path)[0].model.embed_tokens.weight.detach().numpy()
    assert t.tensor_type.name == "Q8_0"
    assert np.array_equal(np.asarray(t.data).reshape(-1), gguf.quants.quantize(embedding, t.tensor_type).reshape(-1))


@pytest.fixture
def wide_llama():
    """A 1-block Llama whose widths are multiples of 256, as the k-quants need (Gemma-style widths)."""
    from conftest import tiny_decoder

    return tiny_decoder("LlamaConfig", "LlamaForCausalLM",
                        {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "head_dim": 64, "tie_word_embeddings": True})


@pytest.mark.parametrize("grid", ["q4_k", "q5_k", "q6_k"])
@pytest.mark.parametrize("method", [RTNConfig, GPTQConfig], ids=["rtn", "gptq"])
def test_k_quant_grids_export_exactly(grid, method, wide_llama, bpe_tokenizer, tmp_path):
    config = method(grid=grid) if method is RTNConfig else method(grid=grid, nsamples=2, seqlen=16)
    path = checkpoint(wide_llama, bpe_tokenizer, config, tmp_path / "ck")
    model, _, manifest = load_checkpoint(path)
    assert {e["format"] for e in manifest["formats"].values()} == {"kquant"}
    export_gguf(path, tmp_path / "m.gguf")
    stored = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    for hf, name, heads in (("self_attn.q_proj", "attn_q", 4), ("self_attn.k_proj", "attn_k", 2),
                            ("mlp.down_proj", "ffn_down", None)):
        fmt = model.model.layers[0].get_submodule(hf).weight_format
        t = stored[f"blk.0.{name}.weight"]
        assert t.tensor_type.name == grid.upper() and t.n_bytes == fmt.nbytes
        want = fmt.to_dense() if heads is None else fmt.to_dense()[rotary_rows(fmt.shape[0], heads)]
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), want.numpy())
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    torch.testing.assert_close(logits(hf_model), logits(model), rtol=1e-5, atol=1e-5)


def test_gptq_on_a_k_grid_beats_rtn_on_it(wide_llama, bpe_tokenizer):
    """GPTQ's error feedback on the same fixed k-quant grid lowers the calibration output error."""
    from sparsa.compress.gptq import gptq_solve
    from sparsa.compress.rtn import rtn

    W = wide_llama.model.layers[0].mlp.down_proj.weight.detach()
    X = torch.randn(512, W.shape[1], generator=torch.Generator().manual_seed(1))
    X[:, :64] *= 4  # uneven input scales, where error feedback helps most
    H = 2 * X.T @ X / X.shape[0]
    config = GPTQConfig(grid="q4_k", nsamples=2, seqlen=16)
    fmt, _, _ = gptq_solve(W, H, config, where="w")
    def output_error(f):
        return float(((X @ (f.to_dense() - W).T) ** 2).mean())
    assert output_error(fmt) < 0.8 * output_error(rtn(W, RTNConfig(grid="q4_k"), where="w"))


def test_a_k_grid_on_rows_of_partial_super_blocks_stops_before_compute(tiny_llama):
    """The tiny Llama's 64-wide rows: the first target is named before any calibration runs."""
    windows = torch.randint(0, 128, (2, 16))
    with pytest.raises(SparsaError, match="model.layers.0.self_attn.q_proj: q4_k needs rows of a multiple of 256"):
        compress_(tiny_llama, GPTQConfig(grid="q4_k", nsamples=2, seqlen=16), calibration=windows, progress=False)
    assert not list(sparse_linears(tiny_llama))
