"""What every CPU kernel's Python entry shares: checking the activations, shaping the call."""

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RowKernel:
    """A compiled ``y = x Wᵀ`` cut so that any caller's threads can share it: the form every CPU
    kernel gives the compiled decode step, which runs a whole token in one parallel region.

    ``prepare(x, operand, scratch)`` turns the activations ``x [N, in]`` (fp32) into what the rows
    read (permuted, padded, quantized: ``scratch``, arrays from ``scratch_for(operand, N)``); then
    ``rows(x, operand, scratch, y, first, last)`` writes the output rows of units ``first .. last``
    (``unit`` rows each, the last unit short) of ``y [N, out]`` for every token. Units are
    independent: any split of them over threads gives the same bytes. ``operand`` is the tuple of
    the weight's arrays (read, never written).
    """

    prepare: Callable
    rows: Callable
    unit: int
    scratch_for: Callable[[tuple, int], tuple]
    prepare_reads: tuple[int, ...] = ()  # the operand entries prepare reads beyond its sizes (SpQR: the permutation)

    def units(self, out_features: int) -> int:
        """Units of ``out_features`` output rows."""
        return -(-out_features // self.unit)


@functools.cache
def parallel(kernel: RowKernel):
    """``run(x, operand, scratch, y, tasks)``: ``kernel`` in one parallel region of ``tasks`` equal runs of units."""
    prepare, rows, unit = kernel.prepare, kernel.rows, kernel.unit

    @numba.njit(parallel=True, error_model="numpy")
    def run(x, operand, scratch, y, tasks):  # pragma: no cover - compiled
        prepare(x, operand, scratch)
        units = (y.shape[1] + unit - 1) // unit
        tasks = max(1, min(tasks, units))
        for task in numba.prange(tasks):
            span = task_span(task, tasks, units)
            rows(x, operand, scratch, y, span.start, span.stop)

    return run


def bind_step(step: Callable):
    """A ``bind(weight, bias)`` for :func:`sparsa.kernels.dispatch.register_linear_kernel` from a
    kernel's ``step(weight, tokens) -> (RowKernel, operand)``: the kernel for that many tokens and the
    arrays it reads, run here by :func:`parallel` (with scratch made per call) and by the compiled
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
            parallel(kernel)(x2, operand, kernel.scratch_for(operand, n), y, tasks)

        return rows_call(weight, bias, run)

    return bind


def no_scratch(operand: tuple, tokens: int) -> tuple:
    """``scratch_for`` of a kernel that reads the activations as they are."""
    return ()


@numba.njit(error_model="numpy")
def read_as_is(x, operand, scratch):  # pragma: no cover - compiled
    """``prepare`` of a kernel that reads the activations as they are."""


@numba.njit(cache=True, error_model="numpy")
def pad_rows(x, out):  # pragma: no cover - compiled
    """``x [N, K]`` into ``out``, one flat fp32 array of N rows of ``width >= K`` (zeros past K)."""
    n_tokens, in_features = x.shape
    width = out.shape[0] // n_tokens
    for n in range(n_tokens):
        for k in range(in_features):
            out[n * width + k] = x[n, k]
        out[n * width + in_features:(n + 1) * width] = 0.0


@numba.njit(inline="always", error_model="numpy")
def task_span(task, tasks, count):  # pragma: no cover - compiled
    """The ``range`` of ``count`` jobs that task ``task`` of ``tasks`` takes: runs that differ by at most one job."""
    return range(task * count // tasks, (task + 1) * count // tasks)
