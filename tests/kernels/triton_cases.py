"""What the Triton kernel tests share: where they run, the dtypes, the expected products."""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # the interpreter gets bf16 wrong
needs_triton = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs a CUDA device or TRITON_INTERPRET=1")


def expected(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 products of the operands as the kernel sees them (weight cast to the activation dtype)."""
    y = x.float() @ W.to(x.dtype).float().T
    return (y if bias is None else y + bias.float()).to(x.dtype)


def tolerance(dtype: torch.dtype) -> dict:
    return {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-2),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1e-1)}[dtype]


def check_kernel(kernel, fmt, W: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    """Run ``kernel`` on the device in ``dtype`` and compare with :func:`expected` on ``W`` (the
    decoded weight, fp32 on the CPU)."""
    x = x.to(DEVICE, dtype)
    bias = None if bias is None else bias.to(DEVICE, dtype)
    y = kernel(x, fmt.to(DEVICE), bias)
    assert y.shape == (*x.shape[:-1], W.shape[0]) and y.dtype == dtype
    torch.testing.assert_close(y.cpu().float(), expected(x, W.to(DEVICE), bias).cpu().float(), **tolerance(dtype))
    return y
