"""DARE (arXiv 2311.03099): drop entries of each task vector at random and rescale the survivors, then
merge."""

import torch

from sparsa.errors import SparsaError
from sparsa.merge.methods.tensors import TaskVector, check_task_vectors, check_unit, disjoint_mean, stack_tensor
from sparsa.merge.params import REAL, UNIT_OPEN, Param
from sparsa.merge.registry import register_method


@register_method("dare", reference_url="https://arxiv.org/abs/2311.03099", kind="static",
                 params={"p": UNIT_OPEN, "lam": REAL, "then": Param(str, choices=("task_arithmetic", "ties"))},
                 storage=lambda n, t: 32 * n)  # the merged vector in fp32
def dare(task_vectors: dict[str, TaskVector], *, generator: torch.Generator | None = None,
         p: float = 0.5, lam: float = 0.3, then: str = "task_arithmetic") -> TaskVector:
    """DARE (Yu et al., "Language Models are Super Mario", arXiv 2311.03099).

    Per task drop each entry with probability ``p`` and rescale survivors:
    ``tau^_t = (1 - m_t) * tau_t / (1 - p)``, ``m_t ~ Bernoulli(p)``, so ``E[tau^_t] = tau_t``. Then merge with
    Task Arithmetic ``lam * sum_t tau^_t`` (``then="task_arithmetic"``) or TIES sign election + disjoint mean
    without trimming, times ``lam`` (``then="ties"``). ``lam`` defaults to 0.3 for both paths; pass ``lam=1.0`` for
    the TIES path as in the TIES paper. 0-d tensors: the plain mean over tasks (no draws).

    Draws: for each tensor with at least one dimension, in the first task's tensor order, one
    ``torch.rand([T, *shape], generator=generator)``; an entry survives where the draw is ``>= p``, so ``p=0``
    keeps everything and equals Task Arithmetic exactly.

    Args:
        task_vectors: Task name -> task vector.
        generator: Source of the drops; ``None`` uses a fresh generator seeded 0.
        p: Drop probability, in [0, 1).
        lam: Scaling coefficient of the final merge.
        then: ``"task_arithmetic"`` or ``"ties"``.

    Returns:
        The merged task vector.
    """
    check_unit("p", p, high_open=True)
    if then not in ("task_arithmetic", "ties"):
        raise SparsaError(f"dare: then must be 'task_arithmetic' or 'ties', got {then!r}")
    tasks, names = check_task_vectors(task_vectors)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = {}
    for name in names:
        x = stack_tensor(task_vectors, tasks, name)
        if x.dim() == 1:
            out[name] = x.mean(0)
            continue
        draw = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
        x = torch.where(draw >= p, x / (1.0 - p), torch.zeros_like(x))
        out[name] = lam * (x.sum(0) if then == "task_arithmetic" else disjoint_mean(x))
    return out
