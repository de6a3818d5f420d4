"""Group-quantized ``Y = X Wᵀ + b`` on the GPU (Triton), reading ``Quant``'s own packed codes.

``Quant`` keeps every ``bits``-bit code of ``W [out, in]`` end to end in one little-endian bit
stream, row-major (:mod:`sparsa.formats.bitpack`), and an fp16 scale and minimum per (row,
group). One program computes a tile of ``BLOCK_M`` outputs for ``BLOCK_N`` tokens, walking the
inputs ``BLOCK_K`` at a time:

    bit = (row * in + k) * bits                          # where code (row, k) starts
    q = ((byte[bit >> 3] | byte[bit >> 3 + 1] << 8) >> (bit & 7)) & (2^bits - 1)
    w = q * scale[row, k // group_size] + minimum[row, k // group_size]    # fp32, as the reference
                                                         # (symmetric: minimum = -2^(bits-1) * scale)
    acc[BLOCK_N, BLOCK_M] += x[:, k] @ w(k)ᵀ             # in the activations' dtype, fp32 sums

so the dense weight never exists in memory and the bytes read per weight are ``bits / 8`` plus
the group statistics. One kernel serves every token count: ``BLOCK_N`` is 16 up to 16 tokens
(the decode case) and grows to 64 beyond.
"""

import torch
import triton
import triton.language as tl

from sparsa.formats.quant import Quant
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.triton.calls import dequant_grid, token_rows
from sparsa.kernels.triton.steps import dot_rows, load_tokens, output_tile, packed_codes, store_outputs

BLOCK_K = 64  # inputs per step of a program (outputs: calls.rows_per_program)


@triton.jit
def _quant_kernel(x_ptr, codes_ptr, scale_ptr, minimum_ptr, bias_ptr, y_ptr, n_tokens, out_features, in_features,
                  n_bytes, n_groups, group_size, stride_x, stride_y, BITS: tl.constexpr, ZERO: tl.constexpr,
                  HAS_BIAS: tl.constexpr,
                  IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, tokens, row_ok, token_ok = output_tile(out_features, n_tokens, BLOCK_M, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < in_features
        x = load_tokens(x_ptr, tokens, k, token_ok, k_ok, stride_x)
        ok = row_ok[:, None] & k_ok[None, :]
        q = packed_codes(codes_ptr, rows[:, None].to(tl.int64) * in_features + k[None, :], n_bytes, ok, BITS)
        stat = rows[:, None].to(tl.int64) * n_groups + k[None, :] // group_size
        scale = tl.load(scale_ptr + stat, mask=ok, other=0.0).to(tl.float32)
        if ZERO:  # symmetric: the implied minimum -ZERO * scale (exact)
            minimum = scale * -ZERO
        else:
            minimum = tl.load(minimum_ptr + stat, mask=ok, other=0.0).to(tl.float32)
        w = (q.to(tl.float32) * scale + minimum).to(x.dtype)  # [BLOCK_M, BLOCK_K]
        acc = dot_rows(acc, x, w, IEEE)
    store_outputs(y_ptr, acc, bias_ptr, tokens, rows, token_ok, row_ok, stride_y, HAS_BIAS)


@register_linear_kernel("quant", "cuda", (torch.float16, torch.bfloat16))
def quant_linear_triton(x: torch.Tensor, weight: Quant, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for a ``Quant`` weight (2..8 bits, any group size; no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: Quant W [out, in].
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "quant")
    (n_tokens, out_features), in_features = y.shape, x2.shape[1]
    if n_tokens:
        grid, block_m, block_n = dequant_grid(n_tokens, out_features)
        minimum = weight.scale if weight.symmetric else weight.minimum  # symmetric: not read
        _quant_kernel[grid](x2, weight.codes, weight.scale, minimum, y if bias is None else bias, y,
                            n_tokens, out_features, in_features, weight.codes.numel(), weight.scale.shape[1],
                            weight.group_size, x2.stride(0), y.stride(0), BITS=weight.bits,
                            ZERO=weight.implied_zero, HAS_BIAS=bias is not None,
                            IEEE=x.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K)
    return y.reshape(*x.shape[:-1], out_features)
