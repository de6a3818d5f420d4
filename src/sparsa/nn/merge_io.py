"""Writing and reading what ``sparsa merge`` produces; every write follows :mod:`sparsa.atomic`
(a temporary directory swapped into place, replacing only an earlier merge output), so a failure
leaves nothing half-written.

* a merged model (static methods): ``model-*.safetensors`` + index, the base directory's config
  and tokenizer files, and ``merge.json``;
* a switch bank (T-Switch): ``switch.safetensors`` holding every task's SignMask arrays under
  ``"{task}/{tensor}.{array}"`` (0-d tensors raw under ``"{task}/{tensor}"``) and ``merge.json``
  with each tensor's SignMask metadata and the bytes per task; a routed bank (Auto-Switch) adds
  ``router.safetensors``, the router's arrays, and its settings under ``merge.json``'s ``router``.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sparsa.atomic import MERGE, check_output_dir, output_directory
from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.nn.checkpoint import INDEX, SHARD_BYTES, write_shards
from sparsa.nn.safetensors_io import read_header

MERGE_MANIFEST = MERGE.manifest
MANIFEST_VERSION = 1  # of merge.json
BANK_FILE = "switch.safetensors"
ROUTER_FILE = "router.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def merge_manifest(merge_method: str, base_model: str, models: dict[str, str], config: dict) -> dict:
    """``merge.json``'s fields before writing adds its own: the version, the method, the base and
    each task's model, and the merge config as given."""
    return {"version": MANIFEST_VERSION, "merge_method": merge_method, "base_model": base_model, "models": models,
            "config": config}


def check_output(out_dir: Path, *, force: bool = False) -> None:
    """Raise unless ``out_dir`` may be written: absent, empty, or an earlier merge output."""
    check_output_dir(out_dir, MERGE, force=force)


def write_merged(out_dir, tensors: dict[str, torch.Tensor], manifest: dict, base_model=None, *,
                 force: bool = False) -> None:
    """A merged model: the tensors as safetensors shards, the non-weight files of ``base_model``
    (when it is a directory: config, tokenizer) and ``merge.json``."""
    with output_directory(out_dir, MERGE, force=force) as (tmp, written):
        if base_model is not None and Path(base_model).is_dir():
            for f in sorted(Path(base_model).iterdir()):
                if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in (INDEX, MERGE_MANIFEST):
                    shutil.copy2(f, tmp / f.name)
        weight_map = write_shards({k: v.contiguous() for k, v in tensors.items()}, tmp, SHARD_BYTES)
        (tmp / INDEX).write_text(json.dumps({"weight_map": weight_map}, indent=2))
        written.update(manifest)


def write_switch_bank(out_dir, compressed: dict[str, CompressedTaskVector], manifest: dict, *,
                      router: dict[str, torch.Tensor] | None = None, force: bool = False) -> dict:
    """A switch bank (see the module docstring); returns ``manifest`` with ``tasks`` filled in
    (per task: tensor metadata, ``nbytes`` of the arrays, ``file_bytes`` its share of the file).
    ``router``: a router's arrays, written to ``router.safetensors`` (``manifest["router"]`` says
    what they are)."""
    arrays, tasks = {}, {}
    for task, ctv in compressed.items():
        if "/" in task:
            raise SparsaError(f"task name {task!r}: must not contain '/'")
        for name, mask in ctv.masks.items():
            arrays.update({f"{task}/{name}.{k}": v.contiguous() for k, v in mask.to_state_dict().items()})
        arrays.update({f"{task}/{name}": t.reshape(()).float().contiguous() for name, t in ctv.raw.items()})
        tasks[task] = {"nbytes": ctv.nbytes, "numel": ctv.numel, "bits_per_param": ctv.bits_per_param,
                       "masks": {name: m.meta() for name, m in ctv.masks.items()}, "raw": sorted(ctv.raw)}
    with output_directory(out_dir, MERGE, force=force) as (tmp, written):
        save_file(arrays, str(tmp / BANK_FILE), metadata={"format": "sparsa-switch-bank"})
        if router is not None:
            save_file({k: v.contiguous() for k, v in router.items()}, str(tmp / ROUTER_FILE),
                      metadata={"format": "sparsa-router"})
        written.update(manifest, tasks=tasks, file_bytes=(tmp / BANK_FILE).stat().st_size)
    return written


def read_router_arrays(directory) -> dict[str, torch.Tensor]:
    """The arrays of a routed bank's ``router.safetensors`` (header checked before reading)."""
    path = Path(directory) / ROUTER_FILE
    read_header(path)
    return load_file(str(path))


def read_switch_bank(directory) -> tuple[dict, dict[str, CompressedTaskVector]]:
    """``(manifest, task -> CompressedTaskVector)`` of a switch bank, every SignMask validated."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MERGE_MANIFEST).read_text())
        tasks = manifest["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SparsaError(f"{directory}: no readable {MERGE_MANIFEST} with tasks (not a switch bank)") from None
    read_header(directory / BANK_FILE)  # checks the file before reading it
    arrays = load_file(str(directory / BANK_FILE))
    out = {}
    for task, info in tasks.items():
        masks = {}
        for name, meta in info["masks"].items():
            where = f"{directory / BANK_FILE}:{task}/{name}"
            parts = {k: arrays.get(f"{task}/{name}.{k}") for k in SignMask.ARRAYS}
            missing = [k for k, v in parts.items() if v is None]
            if missing:
                raise SparsaError(f"{where}: missing arrays {missing}")
            masks[name] = SignMask.from_state_dict(parts, meta, where=where)
        raw = {}
        for name in info["raw"]:
            if f"{task}/{name}" not in arrays:
                raise SparsaError(f"{directory / BANK_FILE}: missing raw tensor {task}/{name}")
            raw[name] = arrays[f"{task}/{name}"]
        out[task] = CompressedTaskVector(masks, raw)
    return manifest, out
