"""TIES-Merging (arXiv 2306.01708): trim each task vector to its largest entries, elect a sign per
entry, and average the task vectors that agree with it."""

import torch

from sparsa.merge.methods.tensors import (TaskVector, check_task_vectors, check_unit, disjoint_mean, stack_tensor,
                                         trim_top_k)
from sparsa.merge.params import REAL, UNIT
from sparsa.merge.registry import register_method


@register_method("ties", reference_url="https://arxiv.org/abs/2306.01708", kind="static",
                 params={"density": UNIT, "lam": REAL},
                 storage=lambda n, t: 32 * n)  # the merged vector in fp32
def ties(task_vectors: dict[str, TaskVector], *, generator: torch.Generator | None = None,
         density: float = 0.2, lam: float = 1.0) -> TaskVector:
    """TIES-Merging (Yadav et al., "Resolving Interference When Merging Models", arXiv 2306.01708).

    Per tensor: trim ``tau~_t = topk_k(|tau_t|)`` with ``k = round(density * n)`` (Python ``round``, at least 1 when
    density > 0), elect ``gamma = sign(sum_t tau~_t)``, disjoint mean
    ``tau^m = sum_{t in A} tau~_t / |A|`` with ``A = {t : tau~_t != 0, sign(tau~_t) = gamma}`` (0 if A is empty),
    and return ``lam * tau^m``. 0-d tensors: the plain mean over tasks.

    Args:
        task_vectors: Task name -> task vector.
        generator: Unused (uniform signature).
        density: Fraction of entries kept per task per tensor, in [0, 1].
        lam: Scaling of the disjoint mean (the paper uses 1).

    Returns:
        The merged task vector.
    """
    check_unit("density", density)
    tasks, names = check_task_vectors(task_vectors)
    out = {}
    for name in names:
        x = stack_tensor(task_vectors, tasks, name)
        out[name] = x.mean(0) if x.dim() == 1 else lam * disjoint_mean(trim_top_k(x, density))
    return out
