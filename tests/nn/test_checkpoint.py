"""Checkpoint container: bit-exact round trips, measured sizes, strict validation, atomic writes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsa.compress import MagnitudeConfig, RTNConfig, compress_
from sparsa.errors import SparsaError
from sparsa.nn import SparseLinear, sparse_linears
from sparsa.nn import checkpoint as ckpt
from sparsa.nn.checkpoint import MANIFEST, load_checkpoint, save_checkpoint

CONFIGS = [RTNConfig(bits=4, group_size=32), RTNConfig(bits=3, group_size=64),
           MagnitudeConfig(sparsity=0.5), MagnitudeConfig(pattern="2:4"),
           MagnitudeConfig(sparsity=0.7, pattern="block:4x1")]


def compressed(model, config):
    compress_(model, config, progress=False)
    return model


def logits(model, seed=1):
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def shard(path):
    return next(path.glob("model-*.safetensors"))


def rewrite(path, edit):
    """Load a shard, let ``edit(tensors)`` change it, write it back (index unchanged)."""
    f = shard(path)
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.method}-{getattr(c, 'pattern', c.to_dict().get('bits'))}")
def test_checkpoint_compressed_model_reloads_bit_exactly(tiny_llama, tiny_tokenizer, tmp_path, config):
    model = compressed(tiny_llama, config)
    manifest = save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    loaded, tokenizer, read = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(model))
    assert read == manifest and read["method"]["method"] == config.method
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    for (fqn, a), (_, b) in zip(sparse_linears(model), sparse_linears(loaded), strict=True):
        for name, array in a.weight_format.arrays().items():
            assert torch.equal(array, getattr(b, name)), f"{fqn}.{name}"
    assert tokenizer("w1 w2")["input_ids"] == tiny_tokenizer("w1 w2")["input_ids"]


def test_checkpoint_manifest_bytes_match_formats_and_files(tiny_llama, tiny_tokenizer, tmp_path):
    model = compressed(tiny_llama, RTNConfig(bits=4, group_size=32))
    manifest = save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method={})
    formats = [m.weight_format for _, m in sparse_linears(model)]
    assert manifest["bytes"] == sum(f.nbytes for f in formats)
    assert manifest["params"] == sum(f.numel for f in formats) == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    # 4-bit codes + fp16 scale and minimum per 32 weights = exactly 5 bits/param
    assert manifest["bits_per_param"] == 5.0
    stored = load_file(str(shard(tmp_path / "ck")))
    compressed_fqns = [fqn for fqn, _ in sparse_linears(model)]
    assert not [f"{fqn}.weight" for fqn in compressed_fqns if f"{fqn}.weight" in stored], "dense copy on disk"
    assert all(f"{fqn}.codes" in stored for fqn in compressed_fqns)


def test_checkpoint_small_shards_split_and_reload(tiny_llama, tiny_tokenizer, tmp_path):
    model = compressed(tiny_llama, RTNConfig(bits=4, group_size=32))
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ck", method={}, shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ck").glob("model-*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(model))


def test_checkpoint_truncated_shard_raises_naming_file(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(compressed(tiny_llama, RTNConfig(bits=4, group_size=32)), tiny_tokenizer, tmp_path / "ck", method={})
    f = shard(tmp_path / "ck")
    data = f.read_bytes()
    for size in (4, 100, len(data) // 2, len(data) - 1):
        f.write_bytes(data[:size])
        with pytest.raises(SparsaError, match=f"{f.name}.*(truncated|corrupt)"):
            load_checkpoint(tmp_path / "ck")


def test_checkpoint_missing_manifest_raises(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(SparsaError, match="not a sparsa checkpoint"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(SparsaError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema=99), "schema 99"),
    (lambda m: m.update(formats=[]), "'formats' must map"),
    (lambda m: m["formats"]["model.layers.0.self_attn.q_proj"]["meta"].update(shape=[64, 32]),
     "model.layers.0.self_attn.q_proj"),
    (lambda m: m["formats"]["model.layers.0.mlp.up_proj"].update(bytes=1), "the manifest says 1"),
    (lambda m: m["formats"]["model.layers.0.mlp.up_proj"].update(format="nosuch"), "unknown format 'nosuch'"),
])
def test_checkpoint_bad_manifest_raises_naming_problem(tiny_llama, tiny_tokenizer, tmp_path, edit, message):
    save_checkpoint(compressed(tiny_llama, RTNConfig(bits=4, group_size=32)), tiny_tokenizer, tmp_path / "ck", method={})
    path = tmp_path / "ck" / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(SparsaError, match=message):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_unparseable_manifest_raises(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    (tmp_path / "ck" / MANIFEST).write_text("{not json")
    with pytest.raises(SparsaError, match="unreadable manifest"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_dense_tensor_wrong_shape_raises_naming_tensor(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(compressed(tiny_llama, RTNConfig(bits=4, group_size=32)), tiny_tokenizer, tmp_path / "ck", method={})
    rewrite(tmp_path / "ck", lambda t: t.update({"model.norm.weight": torch.ones(32)}))
    with pytest.raises(SparsaError, match=r"model\.norm\.weight has shape \[32\]"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_bad_index_range_raises_naming_module(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(compressed(tiny_llama, MagnitudeConfig(pattern="2:4")), tiny_tokenizer, tmp_path / "ck", method={})
    name = "model.layers.1.mlp.down_proj.index"
    rewrite(tmp_path / "ck", lambda t: t[name].zero_())  # every slot at position 0: not increasing
    with pytest.raises(SparsaError, match="model.layers.1.mlp.down_proj: index positions are not strictly increasing"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_shard_missing_from_disk_raises(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    shard(tmp_path / "ck").unlink()
    with pytest.raises(SparsaError, match="is missing"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_failed_write_leaves_nothing(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_shards", broken)
    with pytest.raises(SparsaError, match=r"ck: cannot write \(No space left on device\)"):
        save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_overwrite_replaces_old_checkpoint_only(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={"method": "first"})
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={"method": "second"})
    assert json.loads((tmp_path / "ck" / MANIFEST).read_text())["method"] == {"method": "second"}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(SparsaError, match="other: holds notes.txt, which sparsa did not write"):
        save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "other", method={})
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_checkpoint_dense_model_round_trips(tiny_llama, tiny_tokenizer, tmp_path):
    manifest = save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert manifest["params"] == 0 and not any(isinstance(m, SparseLinear) for m in loaded.modules())
    assert torch.equal(logits(loaded), logits(tiny_llama))


def test_checkpoint_empty_arrays_are_not_taken_for_tied_weights(tiny_llama, tiny_tokenizer, tmp_path):
    """A SpQR layer without outliers has two empty arrays (both at address 0): both must be saved."""
    from sparsa.compress import SpQRConfig

    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    config = SpQRConfig(bits=4, outlier_threshold=1e9, stat_group_size=16, nsamples=2, seqlen=16)
    compress_(tiny_llama, config, calibration=windows, progress=False)
    assert all(m.outlier_values.numel() == 0 for _, m in sparse_linears(tiny_llama))
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(tiny_llama))


@pytest.mark.parametrize("name, value", [("model.norm.weight", float("nan")),
                                         ("model.embed_tokens.weight", float("inf"))])
def test_checkpoint_non_finite_dense_tensor_raises_naming_it(tiny_llama, tiny_tokenizer, tmp_path, name, value):
    save_checkpoint(compressed(tiny_llama, RTNConfig(bits=4, group_size=32)), tiny_tokenizer, tmp_path / "ck", method={})
    rewrite(tmp_path / "ck", lambda t: t[name].view(-1)[3].fill_(value))
    with pytest.raises(SparsaError, match=rf"model-00001-of-00001.safetensors: tensor {name} holds 1 NaN/inf values"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_wrong_task_in_manifest_raises_naming_it(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(compressed(tiny_llama, RTNConfig(bits=4, group_size=32)), tiny_tokenizer, tmp_path / "ck", method={})
    path = tmp_path / "ck" / MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), "task": "encoder"}))
    with pytest.raises(SparsaError, match=r"sparsa.json: task 'encoder' builds a LlamaModel, which has no module "
                                          r"model.layers.0.self_attn.q_proj"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoint_config_sizes_that_disagree_raise_naming_config(tiny_llama, tiny_tokenizer, tmp_path):
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    path = tmp_path / "ck" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_attention_heads": 7}))
    with pytest.raises(SparsaError, match=r"ck/config.json: transformers rejects it \(The hidden size \(64\) is not "
                                          r"a multiple of the number of attention heads \(7\)"):
        load_checkpoint(tmp_path / "ck")
