"""What every CPU kernel's Python entry shares: checking the activations, shaping the call."""

import contextvars
from collections.abc import Callable

import numba
import numpy as np
import torch

from sparsa.errors import SparsaError

TASKS_PER_THREAD = 4  # jobs per thread in the row-split kernels, so uneven rows even out


def check_activations(x: torch.Tensor, weight, dtype: torch.dtype) -> None:
    """Raise unless ``x: [..., in]`` matches the weight's input size and the kernel's dtype."""
    if x.shape[-1] != weight.shape[1]:
        raise SparsaError(f"activations [..., {x.shape[-1]}] do not match a {weight.shape[0]}x{weight.shape[1]} weight")
    if x.dtype != dtype:
        raise SparsaError(f"the {weight.format_name} CPU kernel takes {dtype} activations, got {x.dtype}")


def rows_call(weight, bias: torch.Tensor | None, run: Callable[[np.ndarray, np.ndarray], None]):
    """``x -> Y = X Wᵀ + b`` around ``run(x2, y)``, which fills ``y [N, out]`` from ``x2 [N, in]``
    (fp32, contiguous numpy views; not called for N = 0)."""
    out_features, in_features = weight.shape

    def bound(x: torch.Tensor) -> torch.Tensor:
        check_activations(x, weight, torch.float32)
        x2 = x.detach().reshape(-1, in_features).contiguous()
        y = torch.empty(x2.shape[0], out_features)
        if x2.shape[0]:
            run(x2.numpy(), y.numpy())
        if bias is not None:
            y += bias
        return y.view(*x.shape[:-1], out_features)

    return bound


def bind_step(step: Callable):
    """A ``bind(weight, bias)`` for :func:`sparsa.kernels.dispatch.register_linear_kernel` from a
    kernel's ``step(weight, tokens) -> (kernel, operand)``: the compiled kernel for that many tokens
    and the arrays it reads, called ``kernel(x2, *operand, y, tasks)`` here and by the compiled
    decode step alike. The choice is made once per token count, in the context of the bind call
    (so :func:`~sparsa.kernels.cpu.spqr.fp32_path` at bind time holds for the binding's life)."""

    def bind(weight, bias: torch.Tensor | None = None):
        tasks = TASKS_PER_THREAD * numba.get_num_threads()
        context, chosen = contextvars.copy_context(), {}

        def run(x2: np.ndarray, y: np.ndarray) -> None:
            n = x2.shape[0]
            if n not in chosen:
                chosen[n] = context.run(step, weight, n)
            kernel, operand = chosen[n]
            kernel(x2, *operand, y, tasks)

        return rows_call(weight, bias, run)

    return bind


@numba.njit(cache=True)
def zero_padded_rows(x, width):  # pragma: no cover - compiled
    """``x [N, K]`` as one flat fp32 array of N rows of ``width >= K`` (zeros past K)."""
    n_tokens, in_features = x.shape
    out = np.zeros(n_tokens * width, np.float32)
    for n in range(n_tokens):
        for k in range(in_features):
            out[n * width + k] = x[n, k]
    return out


@numba.njit(inline="always")
def task_span(task, tasks, count):  # pragma: no cover - compiled
    """The ``range`` of ``count`` jobs that task ``task`` of ``tasks`` takes: equal runs, the last one short."""
    per_task = (count + tasks - 1) // tasks
    return range(task * per_task, min(count, (task + 1) * per_task))
