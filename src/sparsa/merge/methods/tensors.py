"""What the static merging methods share: task vectors checked and stacked per tensor, trimming and
the disjoint mean (TIES). A task vector is ``dict[str, Tensor]``, ``tau_t = theta_finetuned - theta_base``."""

import torch

from sparsa.errors import SparsaError

TaskVector = dict[str, torch.Tensor]


def shape_text(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_task_vectors(task_vectors: dict[str, TaskVector]) -> tuple[list[str], list[str]]:
    """Task names and tensor names (first task's order); SparsaError unless names and shapes agree."""
    if not task_vectors:
        raise SparsaError("no task vectors to merge")
    tasks = list(task_vectors)
    ref_task = tasks[0]
    ref = task_vectors[ref_task]
    for task in tasks:
        tv = task_vectors[task]
        for name in ref:
            if name not in tv:
                raise SparsaError(f"tensor {name!r}: missing from task {task!r} (present in task {ref_task!r})")
            if not isinstance(tv[name], torch.Tensor):
                raise SparsaError(f"tensor {name!r}: task {task!r} holds a {type(tv[name]).__name__}, not a tensor")
            if tv[name].shape != ref[name].shape:
                raise SparsaError(f"tensor {name!r}: task {task!r} has shape {shape_text(tv[name])}, "
                                  f"expected {shape_text(ref[name])}")
        for name in tv:
            if name not in ref:
                raise SparsaError(f"tensor {name!r}: in task {task!r} but missing from task {ref_task!r}")
    return tasks, list(ref)


def stack_tensor(task_vectors: dict[str, TaskVector], tasks: list[str], name: str) -> torch.Tensor:
    """``[T, *shape]`` float32 stack of tensor ``name`` over ``tasks`` (a new tensor, never an input)."""
    return torch.stack([task_vectors[t][name].detach().to(torch.float32) for t in tasks])


def check_unit(name: str, value: float, *, high_open: bool = False) -> None:
    """SparsaError unless ``0 <= value <= 1`` (``< 1`` when ``high_open``)."""
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise SparsaError(f"{name} must be in [0, 1{')' if high_open else ']'}, got {value}")


def trim_top_k(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep, per task (row of ``x: [T, *shape]``), the ``k = round(density * n)`` largest ``|x|`` (k >= 1 if
    density > 0; ties broken by ``torch.topk``); zero the rest."""
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    k = min(n, max(round(density * n), 1 if density > 0 else 0))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return (flat * keep).reshape(x.shape)


def disjoint_mean(x: torch.Tensor) -> torch.Tensor:
    """TIES sign election and disjoint mean over the task axis of ``x: [T, *shape]``.

    ``gamma = sign(sum_t x_t)``; per entry the mean of the ``x_t`` that are nonzero with sign ``gamma`` (0 if none).
    """
    gamma = x.sum(0).sign()
    agree = (x != 0) & (x.sign() == gamma)
    count = agree.sum(0).to(torch.float32)
    return (x * agree).sum(0) / count.clamp(min=1.0)
