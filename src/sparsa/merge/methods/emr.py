"""EMR-Merging (arXiv 2405.17461): one elected unified task vector plus a 1-bit mask and a rescaler per
task."""

import torch

from sparsa.merge.methods.tensors import TaskVector, check_task_vectors, stack_tensor
from sparsa.merge.registry import register_method


def _emr_rescaler(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``lambda_t = num / den`` per task, 1 where ``den == 0`` (then the reconstruction is 0 anyway)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


@register_method("emr", reference_url="https://arxiv.org/abs/2405.17461", kind="per_task",
                 storage=lambda n, t: t * n + 32 * t + 32 * n)  # per task a 1-bit mask, an fp32 rescaler; tau_uni
def emr(task_vectors: dict[str, TaskVector], *,
        generator: torch.Generator | None = None) -> dict[str, TaskVector]:
    """EMR-Merging (Huang et al., "Tuning-Free High-Performance Model Merging", arXiv 2405.17461).

    Elect ``gamma = sign(sum_t tau_t)``; unified vector
    ``tau_uni = gamma * max_{t : tau_t * gamma > 0} |tau_t|`` (0 where no task agrees); masks
    ``M_t = (tau_t * gamma > 0)``; one rescaler per task over the whole vector (all tensors)
    ``lambda_t = sum |tau_t| / sum |M_t * tau_uni|`` (1 when the denominator is 0); reconstruction
    ``tau^_t = lambda_t * M_t * tau_uni``, so ``sum |tau^_t| = sum |tau_t|``. 0-d tensors: ``tau_t`` itself, left
    out of the rescaler sums. Storage: see :func:`storage_bits`.

    Args:
        task_vectors: Task name -> task vector.
        generator: Unused (uniform signature).

    Returns:
        Task name -> reconstructed task vector.
    """
    tasks, names = check_task_vectors(task_vectors)
    num = den = None
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scalars: dict[str, torch.Tensor] = {}
    for name in names:
        x = stack_tensor(task_vectors, tasks, name)
        if x.dim() == 1:
            scalars[name] = x
            continue
        gamma = x.sum(0).sign()
        mask = x * gamma > 0
        uni = gamma * (x.abs() * mask).amax(0)
        n_t = x.abs().reshape(len(tasks), -1).sum(1)
        d_t = (mask * uni.abs()).reshape(len(tasks), -1).sum(1)
        num, den = (n_t, d_t) if num is None else (num + n_t, den + d_t)
        parts[name] = (uni, mask)
    scale = _emr_rescaler(num, den) if num is not None else None
    out: dict[str, TaskVector] = {t: {} for t in tasks}
    for name in names:
        for i, task in enumerate(tasks):
            if name in scalars:
                out[task][name] = scalars[name][i].clone()
            else:
                uni, mask = parts[name]
                out[task][name] = scale[i] * (mask[i] * uni)
    return out
