"""N:M sparse ``Y = X Wᵀ + b`` on the GPU (Triton), reading ``NM``'s slots and packed positions.

``NM`` stores, per row and group of ``M`` inputs, ``N`` slot values and each slot's position in
its group (:mod:`sparsa.formats.nm`). One program computes ``BLOCK_M`` outputs x ``BLOCK_N``
tokens, ``BLOCK_K`` inputs at a time: the weight tile is rebuilt in registers, each input
``k`` taking the value of the slot of its group whose position is ``k % M`` (0 if none), and
meets the activations in ``tl.dot`` with fp32 sums. The weight bytes read are the kept values
and ``log2 M`` bits per slot, so 2:4 reads about half of dense plus 1/8 byte per weight. On
CUDA, 2:4 goes to whichever of this kernel and torch's semi-structured path measured faster
for its token count (:mod:`sparsa.kernels.triton.two_four`).
"""

import torch
import triton
import triton.language as tl

from sparsa.formats.bitpack import index_bits
from sparsa.formats.nm import NM
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.triton.calls import dequant_grid, token_rows
from sparsa.kernels.triton.steps import dot_rows, load_tokens, output_tile, packed_codes, store_outputs
from sparsa.kernels.triton.two_four import routed_linear

BLOCK_K = 64  # inputs per step of a program (outputs: calls.rows_per_program)


@triton.jit
def _nm_kernel(x_ptr, values_ptr, index_ptr, bias_ptr, y_ptr, n_tokens, out_features, in_features, n_index_bytes,
               stride_x, stride_y, N: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
               HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):
    rows, tokens, row_ok, token_ok = output_tile(out_features, n_tokens, BLOCK_M, BLOCK_N)
    slots_per_row = in_features // M * N
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < in_features
        x = load_tokens(x_ptr, tokens, k, token_ok, k_ok, stride_x)
        ok = row_ok[:, None] & k_ok[None, :]
        first_slot = rows[:, None].to(tl.int64) * slots_per_row + (k[None, :] // M) * N
        w = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for j in tl.static_range(N):
            position = packed_codes(index_ptr, first_slot + j, n_index_bytes, ok, INDEX_BITS)
            value = tl.load(values_ptr + first_slot + j, mask=ok, other=0.0).to(tl.float32)
            w = tl.where(position == (k[None, :] % M), value, w)
        acc = dot_rows(acc, x, w.to(x.dtype), IEEE)
    store_outputs(y_ptr, acc, bias_ptr, tokens, rows, token_ok, row_ok, stride_y, HAS_BIAS)


@register_linear_kernel("nm", "cuda", (torch.float16, torch.bfloat16))
def nm_linear_triton(x: torch.Tensor, weight: NM, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an ``NM`` weight (any N:M; no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: NM W [out, in]; slot values are cast to ``x.dtype``.
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "nm")
    (n_tokens, out_features), in_features = y.shape, x2.shape[1]

    def ours() -> torch.Tensor:
        grid, block_m, block_n = dequant_grid(n_tokens, out_features)
        _nm_kernel[grid](x2, weight.values, weight.index, y if bias is None else bias, y, n_tokens, out_features,
                         in_features, weight.index.numel(), x2.stride(0), y.stride(0), N=weight.n, M=weight.m,
                         INDEX_BITS=index_bits(weight.m), HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K)
        return y

    if n_tokens == 0:
        return y.reshape(*x.shape[:-1], out_features)
    if x.is_cuda and (weight.n, weight.m) == (2, 4) and x.dtype != torch.float32:
        return routed_linear(x2, weight, bias, ours).reshape(*x.shape[:-1], out_features)
    return ours().reshape(*x.shape[:-1], out_features)
