"""One place that picks the kernel for ``Y = X Wᵀ + b`` by (format, device type, activation dtype)."""

from collections.abc import Callable

import torch

from sparsa.formats.base import Format
from sparsa.kernels.reference import linear_reference

LinearKernel = Callable[[torch.Tensor, Format, torch.Tensor | None], torch.Tensor]

# (format name, device type, activation dtype) -> kernel; anything absent runs the reference.
LINEAR_KERNELS: dict[tuple[str, str, torch.dtype], LinearKernel] = {}


def register_linear_kernel(format_name: str, device_type: str, dtypes: tuple[torch.dtype, ...]):
    """Decorator: file a kernel for a format on a device type for the given activation dtypes."""

    def decorate(fn: LinearKernel) -> LinearKernel:
        for dtype in dtypes:
            LINEAR_KERNELS[(format_name, device_type, dtype)] = fn
        return fn

    return decorate


def select_linear_kernel(weight: Format, x: torch.Tensor) -> LinearKernel:
    """The kernel that :func:`linear` would run for this weight and these activations."""
    return LINEAR_KERNELS.get((weight.format_name, x.device.type, x.dtype), linear_reference)


def linear(x: torch.Tensor, weight: Format, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` with the best kernel for (format, device, dtype).

    Args:
        x: [..., in]; weight: W [out, in] in any format; bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    return select_linear_kernel(weight, x)(x, weight, bias)
