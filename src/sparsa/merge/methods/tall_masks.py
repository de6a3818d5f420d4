"""TALL-masks (arXiv 2405.07813): the multi-task vector plus a 1-bit mask per task of the entries that
task relies on."""

import torch

from sparsa.merge.methods.tensors import TaskVector, check_task_vectors, stack_tensor
from sparsa.merge.params import REAL, Param
from sparsa.merge.registry import register_method


@register_method("tall_masks", reference_url="https://arxiv.org/abs/2405.07813", kind="per_task",
                 params={"mtl_lam": REAL, "tall_lam": Param(float, 0.0)},
                 storage=lambda n, t: t * n + 32 * n)  # a 1-bit mask per task, tau_MTL in fp32
def tall_masks(task_vectors: dict[str, TaskVector], *, generator: torch.Generator | None = None,
               mtl_lam: float = 0.3, tall_lam: float = 0.4) -> dict[str, TaskVector]:
    """TALL-masks (Wang et al., "Localizing Task Information for Improved Model Merging and Compression",
    arXiv 2405.07813).

    Multi-task vector ``tau_MTL = mtl_lam * sum_t tau_t`` (the Task Arithmetic merge); per-task mask
    ``m_t = |tau_t| > tall_lam * |tau_MTL - tau_t|`` elementwise; reconstruction ``tau^_t = m_t * tau_MTL``.
    0-d tensors: ``tau_t`` itself. Storage: see :func:`storage_bits`.

    Args:
        task_vectors: Task name -> task vector.
        generator: Unused (uniform signature).
        mtl_lam: Task Arithmetic coefficient of ``tau_MTL``.
        tall_lam: Mask threshold lambda_t (0 keeps every entry where ``tau_t != 0``).

    Returns:
        Task name -> reconstructed task vector.
    """
    tasks, names = check_task_vectors(task_vectors)
    out: dict[str, TaskVector] = {t: {} for t in tasks}
    for name in names:
        x = stack_tensor(task_vectors, tasks, name)
        if x.dim() == 1:
            for i, task in enumerate(tasks):
                out[task][name] = x[i].clone()
            continue
        mtl = mtl_lam * x.sum(0)
        mask = x.abs() > tall_lam * (mtl - x).abs()
        for i, task in enumerate(tasks):
            out[task][name] = mask[i] * mtl
    return out
