"""A task's samples, as ``sparsa merge`` takes them, and the base causal LM that runs them.

A merge YAML names samples in three places: a trained method's training data (``parameters:
{data: PATH}``), a router's query set (``router: {query_set: {task: PATH}}``) and ``sparsa
merge-eval --inputs TASK=PATH``. A sample file is a safetensors file (never a pickle) holding
exactly one of

* ``input_ids``: integer [n, T] token windows, T >= 2, run through the base model's architecture
  (the ``config.json`` of its directory) on whatever weights are being scored; or
* ``features``: float [n, d], finite: features already embedded by the base model (routing only,
  when the base has no architecture sparsa can run).

:class:`CausalLM` runs the base's architecture functionally (``torch.func.functional_call``) on
a state dict, so a loss or a feature is a function of the weights alone: FlexSwitch trains
through it, routers embed with the base weights, merge-eval scores rebuilt weights.
"""

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsa.errors import SparsaError
from sparsa.nn.safetensors_io import read_header

SAMPLE_KEYS = ("input_ids", "features")
State = Mapping[str, torch.Tensor]
LossFn = Callable[[dict[str, torch.Tensor], int], torch.Tensor]


@dataclass(frozen=True)
class Samples:
    """One sample file: ``input_ids`` [n, T] int64 or ``features`` [n, d] fp32 (the other None)."""

    path: str
    input_ids: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids if self.input_ids is not None else self.features)

    @property
    def key(self) -> str:
        return "input_ids" if self.input_ids is not None else "features"

    def head(self, n: int) -> "Samples":
        """The first ``n`` samples (all when fewer)."""
        if self.input_ids is not None:
            return Samples(self.path, input_ids=self.input_ids[:n])
        return Samples(self.path, features=self.features[:n])


def read_samples(path) -> Samples:
    """Read and validate a sample file (see the module docstring).

    Raises:
        SparsaError: naming the file (and the tensor) when it is missing, not safetensors, holds
            neither or both keys, or a tensor of the wrong dtype, shape or values.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SparsaError(f"{path}: no such sample file (a safetensors file with input_ids or features)")
    header = read_header(path)
    present = [k for k in SAMPLE_KEYS if k in header]
    if len(present) != 1:
        raise SparsaError(f"{path}: a sample file holds exactly one of {', '.join(SAMPLE_KEYS)}; "
                          f"found {', '.join(sorted(header)) or 'no tensor'}")
    key = present[0]
    with safe_open(str(path), framework="pt") as f:
        tensor = f.get_tensor(key)
    where = f"{path}: tensor {key!r}"
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise SparsaError(f"{where} has shape {list(tensor.shape)}; expected [n, {'T' if key == 'input_ids' else 'd'}]"
                          " with n >= 1")
    if key == "input_ids":
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise SparsaError(f"{where} is {tensor.dtype}; token ids are integers")
        if tensor.shape[1] < 2:
            raise SparsaError(f"{where} has windows of {tensor.shape[1]} token; a next-token loss needs 2 or more")
        if int(tensor.min()) < 0:
            raise SparsaError(f"{where} holds a negative token id ({int(tensor.min())})")
        return Samples(str(path), input_ids=tensor.long())
    if not tensor.dtype.is_floating_point:
        raise SparsaError(f"{where} is {tensor.dtype}; features are floating point")
    if not bool(torch.isfinite(tensor).all()):
        raise SparsaError(f"{where} has a non-finite entry")
    return Samples(str(path), features=tensor.float())


class CausalLM:
    """The base model's architecture, run on a given state dict.

    Args:
        model_dir: the base model's directory; its ``config.json`` names a transformers causal LM.
        names: the tensor names the weights will carry (the base's); every parameter of the
            architecture must be among them (tied ones once).

    Raises:
        SparsaError: no ``config.json``, an architecture transformers cannot build, or a
            parameter of it the weights lack.
    """

    def __init__(self, model_dir, names):
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise SparsaError(f"{path}: token windows run through the base model's architecture, and it has no "
                              "config.json (give a Hugging Face model directory as base_model)")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        except (OSError, ValueError, KeyError) as err:
            raise SparsaError(f"{path / 'config.json'}: transformers cannot build this causal LM ({err})") from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        missing = [n for n, _ in self.model.named_parameters() if n not in set(names)]
        if missing:
            raise SparsaError(f"{path}: the architecture has a parameter {missing[0]!r} the base model's "
                              f"tensors lack ({len(missing)} in all)")
        self.vocab = int(self.model.get_input_embeddings().num_embeddings)
        self.where = str(path)

    def check(self, samples: Samples) -> torch.Tensor:
        """``samples``' token windows [n, T], each id within the vocabulary."""
        if samples.input_ids is None:
            raise SparsaError(f"{samples.path}: holds features; this needs input_ids token windows to run "
                              f"through {self.where}")
        top = int(samples.input_ids.max())
        if top >= self.vocab:
            raise SparsaError(f"{samples.path}: tensor 'input_ids' holds id {top}, outside the vocabulary of "
                              f"{self.vocab} of {self.where}")
        return samples.input_ids

    def _run(self, weights: State, ids: torch.Tensor):
        fp32 = {n: t.float() if t.is_floating_point() else t for n, t in weights.items()}
        return torch.func.functional_call(self.model, fp32, (ids,), {"output_hidden_states": True, "use_cache": False})

    def nll(self, weights: State, ids: torch.Tensor) -> torch.Tensor:
        """Summed next-token negative log-likelihood (nats) of ``ids`` [b, T], over ``b * (T - 1)`` tokens."""
        logits = self._run(weights, ids).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")

    def features(self, weights: State, ids: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """[n, D] fp32: each window's last hidden state (after the final norm) averaged over its tokens."""
        with torch.no_grad():
            return torch.cat([self._run(weights, ids[i:i + batch]).hidden_states[-1].float().mean(dim=1)
                              for i in range(0, len(ids), batch)])

    def perplexity(self, weights: State, ids: torch.Tensor, batch: int = 16) -> float:
        """exp of the mean next-token loss of every window of ``ids``."""
        with torch.no_grad():
            total = sum(float(self.nll(weights, ids[i:i + batch])) for i in range(0, len(ids), batch))
        return math.exp(total / (ids.shape[0] * (ids.shape[1] - 1)))

    def loss(self, ids: torch.Tensor, batch_size: int, salt: str) -> LossFn:
        """``loss(weights, step)``: the mean next-token loss on batch ``step`` of ``ids`` [n, T]: ``batch_size``
        windows drawn without replacement by a generator seeded from ``salt`` and ``step`` (the same
        batches every run)."""
        def loss(weights: dict[str, torch.Tensor], step: int) -> torch.Tensor:
            seed = int(hashlib.sha256(f"{salt}/{step}".encode()).hexdigest()[:8], 16)
            rows = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:batch_size]
            return self.nll(weights, ids[rows]) / (len(rows) * (ids.shape[1] - 1))
        return loss
