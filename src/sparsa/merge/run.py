"""Run a :class:`~sparsa.merge.config.MergeConfig` over models given as tensor mappings (lazy
readers welcome): one tensor of each model in memory at a time, plus the result.

* compressed methods (``tswitch``): each model's task vector compressed on its own, tensor by
  tensor, with the global parameters overridden by the model's own;
* trained methods (``flexswitch``): the same, but each model's whole task vector and the base in
  memory, and the task's loss (``losses[task]``, built by the caller from the model's ``data``);
* static methods (``task_arithmetic``, ``ties``, ``dare``): merged tensor by tensor (each is
  elementwise within a tensor), added to the base; DARE's drops come from one generator seeded
  0, in tensor order.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sparsa.errors import SparsaError
from sparsa.merge import methods  # noqa: F401  (registers the methods below)
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.config import MergeConfig
from sparsa.merge.registry import get_method
from sparsa.merge.task_vector import check_same_tensors, iter_task_vector

@dataclass
class MergeOutput:
    """``merged``: the merged model's tensors (static methods); ``compressed``: per task (compressed methods)."""

    method: str
    merged: dict[str, torch.Tensor] | None = None
    compressed: dict[str, CompressedTaskVector] | None = None


def merge_models(config: MergeConfig, base: Mapping[str, torch.Tensor], models: Mapping[str, Mapping],
                 *, losses: Mapping[str, Callable] | None = None, progress: bool = False) -> MergeOutput:
    """Merge ``models`` (task name -> tensors) into ``base`` per ``config``; names and shapes are
    checked against the base before any compute. ``losses``: task -> ``loss(weights, step)``, for a
    trained method (every task needs one)."""
    for task, tensors in models.items():
        check_same_tensors(base, tensors, f"model {task!r}")
    method = get_method(config.merge_method)
    if method.kind == "trained":
        missing = sorted(set(models) - set(losses or {}))
        if missing:
            raise SparsaError(f"merge method {method.name!r}: no loss for task {missing[0]!r}")
        entries = {m.name: m for m in config.models}
        base_fp32 = {n: t.float() for n, t in base.items()}
        compressed = {}
        for task, tensors in tqdm(models.items(), desc=method.name, disable=not progress):
            params, _ = config.training_data(entries[task])
            tau = dict(iter_task_vector(base, tensors, f"model {task!r}"))
            compressed[task] = method(tau, base_fp32, losses[task], **params)
        return MergeOutput(method.name, compressed=compressed)
    if method.kind == "compressed":
        entries = {m.name: m for m in config.models}
        compressed = {task: method(iter_task_vector(base, tensors, f"model {task!r}"),
                                   **config.task_parameters(entries[task]))
                      for task, tensors in tqdm(models.items(), desc=method.name, disable=not progress)}
        return MergeOutput(method.name, compressed=compressed)
    generator = torch.Generator().manual_seed(0)
    merged = {}
    for name in tqdm(list(base), desc=config.merge_method, disable=not progress):
        b = base[name]
        taus = {task: dict(iter_task_vector({name: b}, {name: tensors[name]}, f"model {task!r}"))
                for task, tensors in models.items()}
        out = b.float() + method(taus, generator=generator, **config.parameters)[name]
        merged[name] = out.to(getattr(torch, config.dtype) if config.dtype else b.dtype)
    return MergeOutput(config.merge_method, merged=merged)
