"""What every Triton kernel's Python entry shares: checking the activations, shaping the call."""

import torch
import triton

from sparsa.errors import SparsaError

DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp32: exact products, for the interpreter tests
MAX_BLOCK_N = 64  # tokens per program


def token_rows(x: torch.Tensor, weight, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x: [..., in]`` against the weight; return ``x2 [N, in]`` (contiguous) and an empty
    ``y [N, out]`` in ``x.dtype`` on ``x``'s device."""
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise SparsaError(f"activations [..., {x.shape[-1]}] do not match a {out_features}x{in_features} weight")
    if x.dtype not in DTYPES:
        raise SparsaError(f"the Triton {kernel} kernel takes fp16/bf16/fp32 activations, got {x.dtype}")
    x2 = x.detach().reshape(-1, in_features).contiguous()
    return x2, torch.empty(x2.shape[0], out_features, dtype=x.dtype, device=x.device)


def tokens_per_program(n_tokens: int) -> int:
    """``BLOCK_N``: the smallest power of two >= the token count, from 16 up to :data:`MAX_BLOCK_N`."""
    return min(MAX_BLOCK_N, max(16, triton.next_power_of_2(max(1, n_tokens))))


def rows_per_program(n_tokens: int) -> int:
    """``BLOCK_M`` of the dequantizing kernels: 16 output rows per program up to 16 tokens, so a
    4096-row decode step launches 256 programs rather than 64 (an H100 has 132 SMs); 64 beyond,
    where the token tiles multiply the programs. A starting point, not yet tuned on a GPU."""
    return 16 if n_tokens <= 16 else 64


def dequant_grid(n_tokens: int, out_features: int) -> tuple[tuple[int, int], int, int]:
    """(grid, BLOCK_M, BLOCK_N) of the dequantizing kernels: row tiles x token tiles."""
    block_m, block_n = rows_per_program(n_tokens), tokens_per_program(n_tokens)
    return (triton.cdiv(out_features, block_m), triton.cdiv(n_tokens, block_n)), block_m, block_n
