"""Pure-PyTorch reference kernels: the ground truth every fast kernel is tested against."""

import torch
import torch.nn.functional as F

from sparsa.formats.base import Format
from sparsa.formats.block_int8 import BlockSparseInt8
from sparsa.formats.block_sparse import BlockSparse


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


def quantize_tokens(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token uint8 with offset 128: (codes [N, K] uint8 in [1, 255], scales [N] fp32 > 0)."""
    sx = x2.abs().amax(dim=1) / 127
    sx = torch.where(sx > 0, sx, torch.ones_like(sx))
    return (torch.round(x2 / sx[:, None]).clamp_(-127, 127) + 128).to(torch.uint8), sx


def int8_linear_reference(x: torch.Tensor, weight: BlockSparseInt8, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What the VNNI kernel computes, in plain torch: quantized tokens x int8 codes, exact integer sums."""
    x2 = x.detach().reshape(-1, weight.shape[1]).float()
    xq, sx = quantize_tokens(x2)
    codes = BlockSparse.to_dense(weight, torch.int64)  # [out, in], the int8 codes
    acc = (xq.long() - 128) @ codes.t()  # [N, out], exact
    y = sx[:, None] * weight.scale[None, :] * acc.float()
    y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])
