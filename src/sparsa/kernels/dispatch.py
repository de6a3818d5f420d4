"""One place that picks the kernel for ``Y = X Wᵀ + b`` by (format, device type, activation dtype).

Fast kernels are inference-only: activations that need a gradient take the reference, whose
``F.linear`` autograd handles. A kernel may also decline a weight it was not built for (say
bf16 block values), which then takes the reference too. The choice is logged at debug level.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sparsa.formats.base import Format
from sparsa.kernels.reference import linear_reference
from sparsa.registry import Registry

LinearKernel = Callable[[torch.Tensor, Format, torch.Tensor | None], torch.Tensor]
BoundLinear = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> [..., out] for one weight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    """A filed kernel and the weights it takes (``accepts(weight) -> bool``; None: all)."""

    kernel: LinearKernel
    accepts: Callable[[Format], bool] | None = None
    bind: Callable[[Format, torch.Tensor | None], BoundLinear] | None = None
    step: Callable[[Format, int], tuple] | None = None


# (format name, device type, activation dtype) -> kernel; anything absent runs the reference.
LINEAR_KERNELS: Registry = Registry("linear kernel")  # (format name, device type, dtype) -> Registered
RECORDERS: list[Counter] = []  # open :func:`recorded_kernels` blocks


@contextmanager
def recorded_kernels() -> Iterator[Counter]:
    """Count the kernel choices made inside the block (each :func:`linear` call and each
    :func:`bind_linear`) as ``{(format name, kernel name): choices}``: which kernel a model
    actually ran, the reference (``linear_reference``) included."""
    counts = Counter()
    RECORDERS.append(counts)
    try:
        yield counts
    finally:
        RECORDERS.remove(counts)


def record_kernel(format_name: str, name: str, count: int = 1) -> None:
    """Count a kernel choice in every open :func:`recorded_kernels` block (the dispatcher's own
    choices, and kernels that run a whole step outside it, such as the compiled decode step)."""
    for counts in RECORDERS:
        counts[(format_name, name)] += count


def kernel_name(kernel: LinearKernel) -> str:
    """``module.qualname`` of a kernel, e.g. ``sparsa.kernels.reference.linear_reference``."""
    return f"{kernel.__module__}.{kernel.__qualname__}"


def register_linear_kernel(format_name: str, device_type: str, dtypes: tuple[torch.dtype, ...],
                           accepts: Callable[[Format], bool] | None = None,
                           bind: Callable[[Format, torch.Tensor | None], BoundLinear] | None = None,
                           step: Callable[[Format, int], tuple] | None = None):
    """Decorator: file a kernel for a format on a device type for the given activation dtypes,
    optionally only for the weights ``accepts`` approves, and optionally with ``bind(weight,
    bias)``, which prepares everything once and returns ``x -> y`` for repeated calls, and
    ``step(weight, tokens) -> (kernel, operand tuple)``, the product for ``tokens`` rows of
    activations in a form compiled callers run on their own threads (on the CPU a
    :class:`sparsa.kernels.cpu.calls.RowKernel`)."""

    def decorate(fn: LinearKernel) -> LinearKernel:
        for dtype in dtypes:
            LINEAR_KERNELS.add((format_name, device_type, dtype), Registered(fn, accepts, bind, step))
        return fn

    return decorate


def chosen_kernel(weight: Format, x: torch.Tensor) -> LinearKernel:
    """The kernel for this weight and these activations (not recorded: see :func:`select_linear_kernel`)."""
    entry = LINEAR_KERNELS.get((weight.format_name, x.device.type, x.dtype))
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    if entry is None or needs_grad or (entry.accepts is not None and not entry.accepts(weight)):
        return linear_reference
    return entry.kernel


def select_linear_kernel(weight: Format, x: torch.Tensor) -> LinearKernel:
    """The kernel that :func:`linear` would run for this weight and these activations (recorded)."""
    kernel = chosen_kernel(weight, x)
    record_kernel(weight.format_name, kernel_name(kernel))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s on %s %s: %s", weight.format_name, "x".join(map(str, weight.shape)), x.device.type,
                  x.dtype, kernel.__qualname__)
    return kernel


def linear(x: torch.Tensor, weight: Format, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` with the best kernel for (format, device, dtype).

    Args:
        x: [..., in]; weight: W [out, in] in any format; bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    return select_linear_kernel(weight, x)(x, weight, bias)


def bind_linear(weight: Format, bias: torch.Tensor | None, example: torch.Tensor) -> BoundLinear:
    """``x -> linear(x, weight, bias)`` for activations like ``example`` (device, dtype), with the
    kernel chosen once and, where the kernel offers it, its per-call preparation done once:
    for loops that call the same weight many times (decoding). The weight must not change
    while the result is in use."""
    entry = LINEAR_KERNELS.get((weight.format_name, example.device.type, example.dtype))
    kernel = select_linear_kernel(weight, example)
    if entry is not None and entry.bind is not None and kernel is entry.kernel:
        return entry.bind(weight, bias)
    return lambda x: kernel(x, weight, bias)


def step_kernel(weight: Format, example: torch.Tensor, tokens: int) -> tuple | None:
    """``(kernel, operand)`` (see :func:`register_linear_kernel`'s ``step``) of the kernel :func:`linear` would run for this weight and
    ``tokens`` rows of activations like ``example``, for compiled callers (the decode step); None
    when that kernel has no compiled form (the reference, or a kernel without ``step``)."""
    entry = LINEAR_KERNELS.get((weight.format_name, example.device.type, example.dtype))
    if entry is None or entry.step is None or chosen_kernel(weight, example) is not entry.kernel:
        return None
    return entry.step(weight, tokens)
