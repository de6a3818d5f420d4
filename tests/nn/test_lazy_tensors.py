"""LazyTensors / weight_files: single files, directories, sharded indexes, and their errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sparsa.errors import SparsaError
from sparsa.nn.safetensors_io import LazyTensors, weight_files


def test_lazy_tensors_reads_sharded_directory_tensor_by_tensor(tmp_path):
    a, b = torch.arange(6.0).view(2, 3), torch.ones(4, dtype=torch.float16)
    save_file({"a": a}, str(tmp_path / "s1.safetensors"))
    save_file({"b": b}, str(tmp_path / "s2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                                     "b": "s2.safetensors"}}))
    lazy = LazyTensors(tmp_path)
    assert sorted(lazy) == ["a", "b"] and len(lazy) == 2
    assert torch.equal(lazy["a"], a) and torch.equal(lazy["b"], b) and lazy["b"].dtype == torch.float16
    with pytest.raises(KeyError):
        lazy["c"]


def test_weight_files_single_file_and_model_safetensors_directory(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert weight_files(tmp_path) == {"w": tmp_path / "model.safetensors"}
    assert weight_files(tmp_path / "model.safetensors") == {"w": tmp_path / "model.safetensors"}


def test_weight_files_index_listing_a_missing_tensor_raises(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                                     "z": "s1.safetensors"}}))
    with pytest.raises(SparsaError, match="tensor 'z' listed in the index is missing"):
        weight_files(tmp_path)


def test_weight_files_index_shard_outside_the_directory_raises(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(SparsaError, match="is not a file name in"):
        weight_files(tmp_path)


def test_weight_files_directory_without_safetensors_refuses_pickles(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(SparsaError, match="safetensors weights only; pickles are not read"):
        weight_files(tmp_path)


def test_weight_files_truncated_file_raises_naming_it(tmp_path):
    save_file({"w": torch.zeros(100)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-10])
    with pytest.raises(SparsaError, match="m.safetensors: truncated"):
        weight_files(tmp_path / "m.safetensors")
