"""fp32 block-sparse ``Y = X Wᵀ + b`` on CPU vector units (numba), for any ``R x C`` block.

The weight is BSR (``BlockSparse``): block row ``br`` holds blocks ``crow[br] .. crow[br+1]``,
block ``b`` covering output rows ``br*R .. br*R+R`` and input columns ``col[b]*C .. +C``.

Two loop orders, picked by the token count ``N``:

* **tokens in the vector lanes** (``N >= TOKEN_LANES_MIN``), after the CPU accelerator paper
  (arXiv 2306.16601): with ``Xᵀ: [K, N]``, block ``b`` adds
  ``Yᵀ[r0+i, n] += sum_j values[b, i, j] * Xᵀ[k0+j, n]``, the sum over the block's ``C``
  columns unrolled and the tokens ``n`` in the vector lanes. A block row's output tile
  ``R x N`` stays in L1 while its blocks stream past; the threads split the block rows.
* **weights in the vector lanes** (decode, small ``N``): for each token, each block's
  ``R x C`` values meet ``C`` contiguous activations; no transposes.

Each block shape gets its own compiled pair (``compiled(R, C)``, once per process). Both
accumulate in fp32, so they agree with the dense reference to fp32 rounding.
"""

import functools

import numba
import numpy as np
import torch

from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_LANES_MIN = 4  # below this many tokens the weight-lanes order is faster (measured at 90%, 1 thread)


@functools.cache
def compiled(R: int, C: int) -> tuple:
    """The two loop orders compiled for ``R x C`` blocks: with the block sides constants, LLVM
    unrolls the inner loop over a block's columns and vectorizes the loop over tokens (or rows)."""

    @numba.njit(parallel=True, fastmath=True)
    def tokens_in_lanes(xt, crow, col, values, yt):  # pragma: no cover - compiled
        """yt[M, N] = W xt for xt [K, N]; one block row per task."""
        N = xt.shape[1]
        for br in numba.prange(crow.shape[0] - 1):
            r0 = br * R
            for i in range(R):
                for n in range(N):
                    yt[r0 + i, n] = 0.0
            for b in range(crow[br], crow[br + 1]):
                k0 = col[b] * C
                for i in range(R):
                    for n in range(N):
                        acc = yt[r0 + i, n]
                        for j in range(C):
                            acc += values[b, i, j] * xt[k0 + j, n]
                        yt[r0 + i, n] = acc

    @numba.njit(parallel=True, fastmath=True)
    def weights_in_lanes(x, crow, col, values, y):  # pragma: no cover - compiled
        """y[N, M] = x Wᵀ for x [N, K]; one block row per task, every token inside it."""
        N = x.shape[0]
        for br in numba.prange(crow.shape[0] - 1):
            r0 = br * R
            for n in range(N):
                for i in range(R):
                    y[n, r0 + i] = 0.0
                for b in range(crow[br], crow[br + 1]):
                    k0 = col[b] * C
                    for i in range(R):
                        acc = np.float32(0.0)
                        for j in range(C):
                            acc += values[b, i, j] * x[n, k0 + j]
                        y[n, r0 + i] += acc

    return tokens_in_lanes, weights_in_lanes


def check_activations(x: torch.Tensor, weight, dtype: torch.dtype) -> None:
    """Raise unless ``x: [..., in]`` matches the weight's input size and the kernel's dtype."""
    if x.shape[-1] != weight.shape[1]:
        raise SparsaError(f"activations [..., {x.shape[-1]}] do not match a {weight.shape[0]}x{weight.shape[1]} weight")
    if x.dtype != dtype:
        raise SparsaError(f"the {weight.format_name} CPU kernel takes {dtype} activations, got {x.dtype}")


@register_linear_kernel("block", "cpu", (torch.float32,), accepts=lambda w: w.values.dtype == torch.float32)
def block_sparse_linear(x: torch.Tensor, weight: BlockSparse, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an fp32 ``BlockSparse`` weight and fp32 activations on CPU (no autograd).

    Args:
        x: [..., in] fp32 (any strides; copied to contiguous when needed).
        weight: BlockSparse W [out, in] with fp32 values.
        bias: [out] or None.
    Returns:
        [..., out] fp32, contiguous.
    """
    check_activations(x, weight, torch.float32)
    if weight.values.dtype != torch.float32:
        raise SparsaError(f"the fp32 block kernel needs fp32 block values, got {weight.values.dtype}")
    lead, (out_features, in_features) = x.shape[:-1], weight.shape
    x2 = x.detach().reshape(-1, in_features)
    crow, col, values = (a.contiguous().numpy() for a in (weight.crow, weight.col, weight.values))
    tokens_in_lanes, weights_in_lanes = compiled(*weight.block)
    if x2.shape[0] >= TOKEN_LANES_MIN:
        xt = x2.t().contiguous()  # [K, N]
        yt = torch.empty(out_features, x2.shape[0])
        tokens_in_lanes(xt.numpy(), crow, col, values, yt.numpy())
        y = yt.t().contiguous()
    else:
        y = torch.empty(x2.shape[0], out_features)
        weights_in_lanes(x2.contiguous().numpy(), crow, col, values, y.numpy())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
