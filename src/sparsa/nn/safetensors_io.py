"""Reading and checking safetensors headers without trusting the file.

A safetensors file is ``u64 little-endian header length | JSON header | data``; each header
entry gives ``dtype``, ``shape`` and ``data_offsets`` (begin, end) into the data section.
"""

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsa.errors import SparsaError

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024
# safetensors dtype tag -> torch dtype, for the tags sparsa's formats and models store
DTYPE_TORCH = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
               "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "I64": torch.int64,
               "F64": torch.float64}


@dataclass(frozen=True)
class StoredTensor:
    """One header entry: ``nbytes`` is the size of its data in the file."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: Path) -> dict[str, StoredTensor]:
    """Parse and check a safetensors header against the file's real size.

    Raises:
        SparsaError naming the file: too short, truncated, a bad header, offsets outside the
        data, sizes that disagree with dtype x shape, or bytes missing at the end.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SparsaError(f"{path}: truncated safetensors file ({size} bytes)")
            length = int.from_bytes(head, "little")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise SparsaError(f"{path}: truncated or corrupt safetensors header")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SparsaError(f"{path}: unreadable safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise SparsaError(f"{path}: safetensors header is not a JSON object")
    data_bytes, end_max, tensors = size - 8 - length, 0, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            expected = math.prod(shape) * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise SparsaError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= begin <= end or end - begin != expected:
            raise SparsaError(f"{path}: tensor {name!r} spans {end - begin} bytes, dtype x shape needs {expected}")
        if end > data_bytes:
            raise SparsaError(f"{path}: truncated: tensor {name!r} ends at data byte {end}, "
                              f"the file holds {data_bytes}")
        end_max = max(end_max, end)
        tensors[name] = StoredTensor(dtype, shape, end - begin)
    if end_max != data_bytes:
        raise SparsaError(f"{path}: {data_bytes - end_max} unexpected bytes after the last tensor")
    return tensors


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def weight_files(path) -> dict[str, Path]:
    """Tensor name -> file of a model given as a ``.safetensors`` file or a directory holding
    ``model.safetensors`` or ``model.safetensors.index.json`` with its shards; every header checked.

    Raises:
        SparsaError naming the path: missing, no weights, a bad index, a shard missing a listed tensor.
    """
    path = Path(path)
    if path.is_file():
        return dict.fromkeys(read_header(path), path)
    if not path.is_dir():
        raise SparsaError(f"{path}: no such file or directory")
    if (path / INDEX_NAME).is_file():
        try:
            weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SparsaError(f"{path / INDEX_NAME}: not a safetensors index (no weight_map)") from None
        files = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise SparsaError(f"{path / INDEX_NAME}: shard {shard!r} is not a file name in {path}")
            names = read_header(path / shard)
            for name, where in weight_map.items():
                if where == shard and name not in names:
                    raise SparsaError(f"{path / shard}: tensor {name!r} listed in the index is missing")
            files.update(dict.fromkeys(names, path / shard))
        return files
    if (path / SINGLE_NAME).is_file():
        return dict.fromkeys(read_header(path / SINGLE_NAME), path / SINGLE_NAME)
    raise SparsaError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (safetensors weights only; pickles are not read)")


class LazyTensors(Mapping):
    """A model's tensors by name, read from disk one at a time (``safetensors.safe_open``).

    Args:
        path: a ``.safetensors`` file or a directory (see :func:`weight_files`).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.files = weight_files(self.path)
        self.handles = {}  # file -> its open safe_open handle, opened on first use

    def __getitem__(self, name: str):
        from safetensors import safe_open

        file = self.files[name]
        if file not in self.handles:
            self.handles[file] = safe_open(str(file), framework="pt")
        return self.handles[file].get_tensor(name)

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def write_states(path: str | Path, groups: dict[str, dict], meta: dict[str, str]) -> None:
    """Write named state dicts as one safetensors file (tensor ``group/name``), atomically (temporary
    sibling, rename); ``meta``: string metadata, its ``key`` naming the settings."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{g}/{k}": v.contiguous() for g, state in groups.items() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_states(path: str | Path, key: str, groups: list[str], names: list[str]) -> tuple[dict[str, dict], dict]:
    """The state dicts ``groups`` (each exactly ``names``, in that order) and the metadata of a file of
    :func:`write_states`; an error when it was written for another ``key`` or is unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's cache at fault
        raise SparsaError(f"{path}: not a readable merge-suite file ({type(e).__name__})") from e
    if meta.get("key") != key:
        raise SparsaError(f"{path}: built with other settings (key {meta.get('key')}, wanted {key})")
    out = {}
    for g in groups:
        state = {k[len(g) + 1:]: v for k, v in tensors.items() if k.startswith(f"{g}/")}
        if sorted(state) != sorted(names):
            raise SparsaError(f"{path}: lacks the base's or a task's tensors of the model")
        out[g] = {n: state[n] for n in names}  # the order training gives (DARE draws in tensor order)
    return out, meta
