"""Static model-merging baselines on task vectors: Task Arithmetic, TIES, DARE, EMR-Merging, TALL-masks.

A task vector is ``dict[str, Tensor]`` with ``tau_t = theta_finetuned - theta_base``; every method takes
``task_vectors: dict[task, task vector]`` (same tensor names and shapes in every task) and keyword parameters.
``static`` methods return one merged ``tau`` (add it to ``theta_base``); ``per_task`` methods return one
reconstructed ``tau_hat_t`` per task. All math is float32, vectorised per tensor over a ``[T, *shape]`` stack,
deterministic, and never modifies the inputs.

0-d tensors (scalars) are tiny and carry no sparsity to exploit: the static TIES and DARE merge them as the plain
mean ``(1/T) sum_t tau_t``, the per-task methods return ``tau_t`` itself (Task Arithmetic has no special case: it is
elementwise already). EMR's rescalers are computed over the tensors with at least one dimension.
"""

import torch

from sparsa.errors import SparsaError
from sparsa.merge.params import REAL, UNIT, UNIT_OPEN, Param
from sparsa.merge.registry import get_method, register_method

TaskVector = dict[str, torch.Tensor]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check(task_vectors: dict[str, TaskVector]) -> tuple[list[str], list[str]]:
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
                raise SparsaError(f"tensor {name!r}: task {task!r} has shape {_shape(tv[name])}, "
                                  f"expected {_shape(ref[name])}")
        for name in tv:
            if name not in ref:
                raise SparsaError(f"tensor {name!r}: in task {task!r} but missing from task {ref_task!r}")
    return tasks, list(ref)


def _stack(task_vectors: dict[str, TaskVector], tasks: list[str], name: str) -> torch.Tensor:
    """``[T, *shape]`` float32 stack of tensor ``name`` over ``tasks`` (a new tensor, never an input)."""
    return torch.stack([task_vectors[t][name].detach().to(torch.float32) for t in tasks])


def _check_unit(name: str, value: float, *, high_open: bool = False) -> None:
    """SparsaError unless ``0 <= value <= 1`` (``< 1`` when ``high_open``)."""
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise SparsaError(f"{name} must be in [0, 1{')' if high_open else ']'}, got {value}")


def _trim_top_k(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep, per task (row of ``x: [T, *shape]``), the ``k = round(density * n)`` largest ``|x|`` (k >= 1 if
    density > 0; ties broken by ``torch.topk``); zero the rest."""
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    k = min(n, max(round(density * n), 1 if density > 0 else 0))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return (flat * keep).reshape(x.shape)


def _disjoint_mean(x: torch.Tensor) -> torch.Tensor:
    """TIES sign election and disjoint mean over the task axis of ``x: [T, *shape]``.

    ``gamma = sign(sum_t x_t)``; per entry the mean of the ``x_t`` that are nonzero with sign ``gamma`` (0 if none).
    """
    gamma = x.sum(0).sign()
    agree = (x != 0) & (x.sign() == gamma)
    count = agree.sum(0).to(torch.float32)
    return (x * agree).sum(0) / count.clamp(min=1.0)


@register_method("task_arithmetic", reference_url="https://arxiv.org/abs/2212.04089", kind="static",
                 params={"lam": REAL})
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
    tasks, names = _check(task_vectors)
    return {name: lam * _stack(task_vectors, tasks, name).sum(0) for name in names}


@register_method("ties", reference_url="https://arxiv.org/abs/2306.01708", kind="static",
                 params={"density": UNIT, "lam": REAL})
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
    _check_unit("density", density)
    tasks, names = _check(task_vectors)
    out = {}
    for name in names:
        x = _stack(task_vectors, tasks, name)
        out[name] = x.mean(0) if x.dim() == 1 else lam * _disjoint_mean(_trim_top_k(x, density))
    return out


@register_method("dare", reference_url="https://arxiv.org/abs/2311.03099", kind="static",
                 params={"p": UNIT_OPEN, "lam": REAL, "then": Param(str, choices=("task_arithmetic", "ties"))})
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
    _check_unit("p", p, high_open=True)
    if then not in ("task_arithmetic", "ties"):
        raise SparsaError(f"dare: then must be 'task_arithmetic' or 'ties', got {then!r}")
    tasks, names = _check(task_vectors)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = {}
    for name in names:
        x = _stack(task_vectors, tasks, name)
        if x.dim() == 1:
            out[name] = x.mean(0)
            continue
        draw = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
        x = torch.where(draw >= p, x / (1.0 - p), torch.zeros_like(x))
        out[name] = lam * (x.sum(0) if then == "task_arithmetic" else _disjoint_mean(x))
    return out


def _emr_rescaler(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``lambda_t = num / den`` per task, 1 where ``den == 0`` (then the reconstruction is 0 anyway)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


@register_method("emr", reference_url="https://arxiv.org/abs/2405.17461", kind="per_task")
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
    tasks, names = _check(task_vectors)
    num = den = None
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scalars: dict[str, torch.Tensor] = {}
    for name in names:
        x = _stack(task_vectors, tasks, name)
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


@register_method("tall_masks", reference_url="https://arxiv.org/abs/2405.07813", kind="per_task",
                 params={"mtl_lam": REAL, "tall_lam": Param(float, 0.0)})
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
    tasks, names = _check(task_vectors)
    out: dict[str, TaskVector] = {t: {} for t in tasks}
    for name in names:
        x = _stack(task_vectors, tasks, name)
        if x.dim() == 1:
            for i, task in enumerate(tasks):
                out[task][name] = x[i].clone()
            continue
        mtl = mtl_lam * x.sum(0)
        mask = x.abs() > tall_lam * (mtl - x).abs()
        for i, task in enumerate(tasks):
            out[task][name] = mask[i] * mtl
    return out


def storage_bits(name: str, numel_per_task: int, tasks: int) -> int:
    """Bits a method must store to serve ``tasks`` tasks of ``numel_per_task`` parameters each.

    * ``task_arithmetic``, ``ties``, ``dare``: the merged vector in fp32, ``32 * numel``.
    * ``emr``: a 1-bit mask per parameter per task, one fp32 rescaler per task and ``tau_uni`` in fp32 once,
      ``tasks * numel + 32 * tasks + 32 * numel``.
    * ``tall_masks``: a 1-bit mask per parameter per task and ``tau_MTL`` in fp32 once, ``tasks * numel + 32 * numel``.

    Args:
        name: A registered method name (SparsaError for an unknown one or one without a formula here).
        numel_per_task: Parameters in one task vector.
        tasks: Number of tasks.

    Returns:
        The storage in bits.
    """
    get_method(name)
    if numel_per_task < 0 or tasks < 1:
        raise SparsaError(f"storage_bits: need numel_per_task >= 0 and tasks >= 1, got {numel_per_task}, {tasks}")
    n, t = numel_per_task, tasks
    formulas = {"task_arithmetic": 32 * n, "ties": 32 * n, "dare": 32 * n,
                "emr": t * n + 32 * t + 32 * n, "tall_masks": t * n + 32 * n}
    if name not in formulas:
        raise SparsaError(f"storage_bits: no formula for merge method {name!r}; known: {', '.join(sorted(formulas))}")
    return formulas[name]
