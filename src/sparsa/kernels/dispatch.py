"""One place that picks the kernel for ``Y = X Wᵀ + b`` by (format, device type, activation dtype).

Fast kernels are inference-only: activations that need a gradient take the reference, whose
``F.linear`` autograd handles. A kernel may also decline a weight it was not built for (say
bf16 block values), which then takes the reference too. The choice is logged at debug level.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsa.formats.base import Format
from sparsa.kernels.reference import linear_reference

LinearKernel = Callable[[torch.Tensor, Format, torch.Tensor | None], torch.Tensor]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    """A filed kernel and the weights it takes (``accepts(weight) -> bool``; None: all)."""

    kernel: LinearKernel
    accepts: Callable[[Format], bool] | None = None


# (format name, device type, activation dtype) -> kernel; anything absent runs the reference.
LINEAR_KERNELS: dict[tuple[str, str, torch.dtype], Registered] = {}


def register_linear_kernel(format_name: str, device_type: str, dtypes: tuple[torch.dtype, ...],
                           accepts: Callable[[Format], bool] | None = None):
    """Decorator: file a kernel for a format on a device type for the given activation dtypes,
    optionally only for the weights ``accepts`` approves."""

    def decorate(fn: LinearKernel) -> LinearKernel:
        for dtype in dtypes:
            LINEAR_KERNELS[(format_name, device_type, dtype)] = Registered(fn, accepts)
        return fn

    return decorate


def select_linear_kernel(weight: Format, x: torch.Tensor) -> LinearKernel:
    """The kernel that :func:`linear` would run for this weight and these activations."""
    entry = LINEAR_KERNELS.get((weight.format_name, x.device.type, x.dtype))
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    if entry is None or needs_grad or (entry.accepts is not None and not entry.accepts(weight)):
        kernel = linear_reference
    else:
        kernel = entry.kernel
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
