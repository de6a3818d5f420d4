"""Pure-PyTorch reference kernels: the ground truth every fast kernel is tested against."""

import torch
import torch.nn.functional as F

from sparsa.formats.base import Format


def linear_reference(x: torch.Tensor, weight: Format, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` by decoding the whole weight.

    Args:
        x: [..., in] activations.
        weight: any format holding W: [out, in].
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    return F.linear(x, weight.to_dense(x.dtype), bias)
