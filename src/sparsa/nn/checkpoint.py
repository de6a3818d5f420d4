"""The only writer and reader of sparsa checkpoint directories.

Layout of a checkpoint ``DIR``:
    config.json, tokenizer files        as Hugging Face writes them; config.json's
                                        ``quantization_config`` (``quant_method: sparsa``) lets
                                        transformers load the directory (:mod:`sparsa.nn.hf_quantizer`)
    sparsa.json                         manifest: schema, sparsa version, task (``causal-lm``
                                        or ``encoder``), method, per-module format + metadata
                                        + bytes on disk, bits/param
    model-0000N-of-0000M.safetensors    every format array as ``<module>.<array>``, dense tensors
    model.safetensors.index.json        tensor name -> shard

Writes follow :mod:`sparsa.atomic`: built in a temporary sibling swapped into place at the end, so
a failure never leaves a half-written checkpoint, and only an earlier checkpoint (``sparsa.json``
listing every file there) is ever replaced. Loads validate schema, shapes, dtypes and index ranges of
every tensor before building the model (on the ``meta`` device, no random init).
"""

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsa import __version__
from sparsa.atomic import CHECKPOINT, output_directory
from sparsa.errors import SparsaError
from sparsa.formats.registry import get_format
from sparsa.nn.hf_quantizer import quantization_config
from sparsa.nn.safetensors_io import read_header
from sparsa.nn.sparse_linear import SparseLinear
from sparsa.nn.surgery import set_submodule, sparse_linears

SCHEMA_VERSION = 1
MANIFEST = CHECKPOINT.manifest
INDEX = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3
# task -> the transformers auto class that rebuilds the model; manifests without a task are causal LMs
TASKS = {"causal-lm": "AutoModelForCausalLM", "encoder": "AutoModel"}


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` is a directory holding a sparsa manifest."""
    return (Path(path) / MANIFEST).is_file()


# -- writing ---------------------------------------------------------------------------------
def tie_sources(model: nn.Module) -> set[str]:
    """Names Hugging Face weight tying copies from (``model.embed_tokens.weight``, which
    ``lm_head.weight`` gets), as the model's config asks now; empty for other models."""
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    return set(expand(all_submodels=True).values()) if callable(expand) else set()


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without tied duplicates, in state-dict order. A shared tensor keeps the
    name its architecture loads and ties from (:func:`tie_sources`), else its first name."""
    state, sources = model.state_dict(), tie_sources(model)
    seen, keep = set(), set()
    for name in sorted(state, key=lambda n: n not in sources):  # stable: tie sources claim first
        tensor = state[name]
        # empty tensors all sit at address 0: they are never tied, keep each one
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() == 0 or key not in seen:
            seen.add(key)
            keep.add(name)
    return {name: t.detach().contiguous().cpu() for name, t in state.items() if name in keep}


def write_shards(tensors: dict[str, torch.Tensor], directory: Path, shard_bytes: int) -> dict[str, str]:
    """Write tensors into ``model-0000N-of-0000M.safetensors`` files; return name -> file."""
    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    return weight_map


def save_checkpoint(model: nn.Module, tokenizer, out_dir, *, method: dict,
                    shard_bytes: int = SHARD_BYTES, force: bool = False) -> dict:
    """Write ``model`` (with its ``SparseLinear`` layers) and tokenizer as a checkpoint.

    Args:
        model: a Hugging Face model, compressed in place by ``compress_`` (a causal LM, or a bare
            encoder such as ``BertModel``: the manifest's ``task`` records which).
        tokenizer: its tokenizer (saved beside), or None.
        out_dir: target directory; created, or replaced when it is an earlier checkpoint (see
            :mod:`sparsa.atomic`).
        method: the method config as a dict, recorded in the manifest.
        force: replace ``out_dir`` even when it holds files sparsa did not write.
    Returns:
        The manifest written to ``sparsa.json``.
    """
    with output_directory(out_dir, CHECKPOINT, force=force) as (tmp, manifest):
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        weight_map = write_shards(unique_tensors(model), tmp, shard_bytes)
        stored = {}
        for filename in sorted(set(weight_map.values())):
            stored.update(read_header(tmp / filename))
        manifest.update(build_manifest(model, method, stored))
        config = copy.deepcopy(model.config)  # as model.save_pretrained writes it, plus the quantization config
        config.dtype = str(model.dtype).split(".")[1]
        config.architectures = [type(model).__name__]
        config.quantization_config = quantization_config(manifest)  # transformers' from_pretrained reads it
        config.save_pretrained(tmp)
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": sum(t.nbytes for t in stored.values())},
                                             "weight_map": weight_map}, indent=2))
    return manifest


def model_task(model: nn.Module) -> str:
    """``causal-lm`` for models that generate, else ``encoder`` (a bare transformer body)."""
    can_generate = getattr(model, "can_generate", None)
    return "causal-lm" if can_generate is not None and can_generate() else "encoder"


def build_manifest(model: nn.Module, method: dict, stored: dict) -> dict:
    """Manifest with per-module byte counts measured from the written safetensors headers."""
    formats, params, nbytes = {}, 0, 0
    for fqn, module in sparse_linears(model):
        fmt = module.weight_format
        on_disk = sum(stored[f"{fqn}.{array}"].nbytes for array in fmt.arrays())
        if on_disk != fmt.nbytes:
            raise RuntimeError(f"{fqn}: {on_disk} bytes written, format.nbytes says {fmt.nbytes}")
        formats[fqn] = {"format": fmt.format_name, "meta": fmt.meta(), "bytes": on_disk}
        params, nbytes = params + fmt.numel, nbytes + on_disk
    return {"schema": SCHEMA_VERSION, "sparsa_version": __version__, "task": model_task(model),
            "method": method, "formats": formats,
            "params": params, "bytes": nbytes, "bits_per_param": 8 * nbytes / max(params, 1)}


# -- reading ---------------------------------------------------------------------------------
def read_manifest(directory: Path) -> dict:
    """Load and check ``sparsa.json`` (schema version and the shape of every entry)."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise SparsaError(f"{directory}: no such checkpoint directory")
    if not path.is_file():
        raise SparsaError(f"{directory}: not a sparsa checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SparsaError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise SparsaError(f"{path}: schema {found!r}, this sparsa {__version__} reads schema {SCHEMA_VERSION}")
    formats = manifest.get("formats")
    if not isinstance(formats, dict) or not all(
            isinstance(e, dict) and {"format", "meta", "bytes"} <= set(e) for e in formats.values()):
        raise SparsaError(f"{path}: 'formats' must map module -> {{format, meta, bytes}}")
    manifest.setdefault("task", "causal-lm")
    if manifest["task"] not in TASKS:
        raise SparsaError(f"{path}: task {manifest['task']!r} is not one of {', '.join(TASKS)}")
    return manifest


def read_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Check every shard's header against the index and the file size, then load all tensors.

    Returns:
        name -> tensor, and name -> shard file name (for error messages).
    """
    index_path = directory / INDEX
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise SparsaError(f"{index_path}: missing or unreadable index ({err})") from None
    tensors = {}
    for filename in sorted(set(weight_map.values())):
        path = directory / filename
        if Path(filename).name != filename or not path.is_file():
            raise SparsaError(f"{index_path}: shard {filename!r} is missing")
        names = {n for n, f in weight_map.items() if f == filename}
        stored = set(read_header(path))
        if names != stored:
            raise SparsaError(f"{path}: holds {sorted(stored ^ names)[:3]} contrary to the index")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors.update({name: f.get_tensor(name) for name in sorted(names)})
        except Exception as err:  # safetensors raises its own error types on corrupt data
            raise SparsaError(f"{path}: unreadable safetensors data ({err})") from None
    return tensors, weight_map


def build_formats(manifest: dict, tensors: dict, weight_map: dict, directory: Path) -> dict:
    """Pop each module's arrays out of ``tensors`` and rebuild its validated format."""
    formats = {}
    for fqn, entry in manifest["formats"].items():
        cls = get_format(entry["format"])
        where = f"{directory / weight_map.get(f'{fqn}.{cls.ARRAYS[0]}', MANIFEST)}:{fqn}"
        names = cls.array_names(entry["meta"])
        missing = [a for a in names if f"{fqn}.{a}" not in tensors]
        if missing:
            raise SparsaError(f"{where}: tensor {fqn}.{missing[0]} is missing")
        arrays = {a: tensors.pop(f"{fqn}.{a}") for a in names}
        fmt = cls.from_state_dict(arrays, entry["meta"], where=where)
        if fmt.nbytes != entry["bytes"]:
            raise SparsaError(f"{where}: {fmt.nbytes} bytes stored, the manifest says {entry['bytes']}")
        formats[fqn] = fmt
    return formats


def tie_loaded(model: nn.Module, missing: set[str]) -> None:
    """Tie the weights the config ties, given the names the checkpoint did not provide: transformers
    fills a missing tie target from its source (or the reverse), and leaves two distinct stored
    tensors untied."""
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights(missing_keys=set(missing))


def check_complete(model: nn.Module, directory: Path) -> None:
    """Raise naming the first parameter or persistent buffer that neither the checkpoint nor weight
    tying provided (it would otherwise keep a random or empty value)."""
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise SparsaError(f"{directory}: tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)")


def init_buffers(model: nn.Module, module: nn.Module, names: list[str], fill: int) -> dict[str, torch.Tensor]:
    """Run the model's ``_init_weights`` on ``module`` with its buffers ``names`` on the CPU, filled
    with ``fill`` first, and its parameters swapped for meta scratch copies (the loaded ones are never
    touched, nor copied); return those buffers."""
    params, buffers = dict(module._parameters), {name: module._buffers[name] for name in names}
    try:
        for name, param in params.items():
            if param is not None:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
        for name, buffer in buffers.items():
            module._buffers[name] = torch.full(buffer.shape, fill, dtype=buffer.dtype)
        model._init_weights(module)
        return {name: module._buffers[name] for name in names}
    finally:
        module._parameters.update(params)
        module._buffers.update(buffers)


def materialize_buffers(model: nn.Module, directory: Path) -> None:
    """Compute the non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``, ...) that the
    meta build left empty, with the model's own init run twice from two fills: a buffer the init
    leaves as it found it (does not compute) is a SparsaError naming it."""
    for prefix, module in model.named_modules():
        names = [name for name, buffer in module._buffers.items() if buffer is not None and buffer.is_meta]
        if not names:
            continue
        first, second = init_buffers(model, module, names, 0), init_buffers(model, module, names, 1)
        for name in names:
            if not torch.equal(first[name], second[name]):
                raise SparsaError(f"{directory}: buffer {prefix}.{name} is not in the checkpoint and the "
                                  "model's init does not compute it")
            module._buffers[name] = first[name]


def build_model(directory: Path, task: str) -> tuple[nn.Module, object]:
    """The model ``config.json`` describes, on the ``meta`` device (the auto class of ``task``), and
    the tokenizer; a config that transformers rejects is a SparsaError naming ``config.json``."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = getattr(transformers, TASKS[task]).from_config(config)
    except Exception as err:  # noqa: BLE001  config validators raise their own error types
        cause = str(err).split("ValueError: ")[-1].splitlines()[0]
        raise SparsaError(f"{directory / 'config.json'}: transformers rejects it ({cause})") from None
    try:
        return model, AutoTokenizer.from_pretrained(directory, config=config)
    except (OSError, ValueError) as err:
        raise SparsaError(f"{directory}: bad tokenizer files ({err})") from None


def check_dense(tensors: dict, expected: dict, weight_map: dict, directory: Path) -> None:
    """Every dense tensor is one the model has, of its shape, and finite."""
    for name, tensor in tensors.items():
        where = directory / weight_map[name]
        if name not in expected:
            raise SparsaError(f"{where}: unexpected tensor {name}")
        if tensor.shape != expected[name].shape:
            raise SparsaError(f"{where}: tensor {name} has shape {list(tensor.shape)}, "
                              f"the config needs {list(expected[name].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SparsaError(f"{where}: tensor {name} holds {int((~torch.isfinite(tensor)).sum())} NaN/inf values")


def load_checkpoint(directory) -> tuple[nn.Module, object, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        (model in eval mode on the CPU, tokenizer, manifest).
    Raises:
        SparsaError naming the file and tensor at fault, before any compute.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    tensors, weight_map = read_tensors(directory)
    formats = build_formats(manifest, tensors, weight_map, directory)
    model, tokenizer = build_model(directory, manifest["task"])
    modules = dict(model.named_modules())
    for fqn, fmt in formats.items():
        if fqn not in modules:
            raise SparsaError(f"{directory / MANIFEST}: task {manifest['task']!r} builds a "
                              f"{type(model).__name__}, which has no module {fqn}")
        old = modules[fqn]
        if not isinstance(old, nn.Linear) or (old.out_features, old.in_features) != fmt.shape:
            raise SparsaError(f"{directory}: {fqn} is {fmt.shape} in the checkpoint, the config has {old}")
        set_submodule(model, fqn, SparseLinear(fmt, tensors.pop(f"{fqn}.bias", None)))
    expected = {n: t for n, t in model.state_dict().items() if t.is_meta}
    check_dense(tensors, expected, weight_map, directory)
    model.load_state_dict(tensors, strict=False, assign=True)
    tie_loaded(model, set(expected) - set(tensors))
    check_complete(model, directory)
    materialize_buffers(model, directory)
    return model.eval(), tokenizer, manifest
