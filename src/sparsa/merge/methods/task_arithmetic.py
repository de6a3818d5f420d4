"""Task Arithmetic (arXiv 2212.04089): the task vectors' sum scaled by ``lambda``, added to the base."""

import torch

from sparsa.merge.methods.tensors import TaskVector, check_task_vectors, stack_tensor
from sparsa.merge.params import REAL
from sparsa.merge.registry import register_method


@register_method("task_arithmetic", reference_url="https://arxiv.org/abs/2212.04089", kind="static",
                 params={"lam": REAL},
                 storage=lambda n, t: 32 * n)  # the merged vector in fp32
def task_arithmetic(task_vectors: dict[str, TaskVector], *, generator: torch.Generator | None = None,
                    lam: float = 0.3) -> TaskVector:
    """Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", arXiv 2212.04089).

    ``tau = lam * sum_t tau_t``, elementwise for every tensor (0-d included).

    Args:
        task_vectors: Task name -> task vector.
        generator: Unused (uniform signature).
        lam: Scaling coefficient lambda.

    Returns:
        The merged task vector.
    """
    tasks, names = check_task_vectors(task_vectors)
    return {name: lam * stack_tensor(task_vectors, tasks, name).sum(0) for name in names}
