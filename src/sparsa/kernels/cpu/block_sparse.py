"""fp32 block-sparse ``Y = X Wᵀ + b`` on CPU vector units (numba), for any ``R x C`` block.

The weight is BSR (``BlockSparse``): block row ``br`` holds blocks ``crow[br] .. crow[br+1]``,
block ``b`` covering output rows ``br*R .. br*R+R`` and input columns ``col[b]*C .. +C``.

Two loop orders, picked by the token count ``N``:

* **tokens in the vector lanes** (``N >= TOKEN_LANES_MIN``), after the CPU accelerator paper
  (arXiv 2306.16601): ``X`` is cut into chunks of 16 tokens laid out ``[K, 16]`` (one chunk,
  K x 64 bytes, stays in L1); block ``b`` adds ``Yᵀ[r0+i, n] += sum_j values[b, i, j] *
  Xᵀ[k0+j, n]``, the sum over the block's ``C`` columns unrolled and the 16 tokens in one
  vector. Output tiles of >= 16 rows are written to ``Y`` row-major (no transpose of the
  output); the threads split the block rows into runs.
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
from sparsa.kernels.cpu.calls import check_activations
from sparsa.kernels.cpu.transpose import transpose16
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_LANES_MIN = 4  # below this many tokens the weight-lanes order is faster (measured at 90%, 1 thread)
LANES = 32  # tokens per chunk in the tokens-in-lanes order: two AVX-512 registers of fp32


@functools.cache
def compiled(R: int, C: int) -> tuple:
    """The two loop orders compiled for ``R x C`` blocks: with the block sides constants, LLVM
    unrolls the inner loop over a block's columns and vectorizes the loop over tokens (or rows)."""

    group = max(1, 16 // R)  # block rows per output tile: >= 16 rows, whole cache lines of Y per token

    @numba.njit(parallel=True, fastmath=True)
    def tokens_in_lanes(xc, crow, col, values, y, tasks):  # pragma: no cover - compiled
        """y[N, M] = X Wᵀ for X given as chunks ``xc [N / lanes, K, lanes]`` (tokens padded).

        Each task takes a run of block rows; for every chunk of ``lanes`` tokens (a cache-sized slice
        of X) it accumulates ``group`` block rows in a ``group*R x lanes`` tile and writes the
        tile out row-major, so each token's outputs land in whole cache lines."""
        n_tokens, n_block_rows = y.shape[0], crow.shape[0] - 1
        # a constant chunk width lets LLVM unroll the token loop: faster for row blocks (R = 1),
        # slower for column blocks, where it vectorizes across the block's rows instead
        lanes = LANES if R == 1 else xc.shape[2]
        n_tiles = (n_block_rows + group - 1) // group
        per_task = (n_tiles + tasks - 1) // tasks
        for task in numba.prange(tasks):
            tile = np.empty((group * R, lanes), np.float32)
            for chunk in range(xc.shape[0]):
                n0 = chunk * lanes
                width = min(lanes, n_tokens - n0)
                for t in range(task * per_task, min(n_tiles, (task + 1) * per_task)):
                    first = t * group
                    rows = min(group, n_block_rows - first) * R
                    tile[:] = 0.0
                    for br in range(first, first + rows // R):
                        i0 = (br - first) * R
                        for b in range(crow[br], crow[br + 1]):
                            k0 = col[b] * C
                            for i in range(R):
                                for n in range(lanes):
                                    acc = tile[i0 + i, n]
                                    for j in range(C):
                                        acc += values[b, i, j] * xc[chunk, k0 + j, n]
                                    tile[i0 + i, n] = acc
                    if rows == 16 and width == lanes:  # whole 16 x 16 blocks: transposed in registers
                        for half in range(0, lanes, 16):
                            transpose16(tile, half, lanes, y, (n0 + half) * y.shape[1] + first * R, y.shape[1])
                    else:
                        for n in range(width):
                            for i in range(rows):
                                y[n0 + n, first * R + i] = tile[i, n]

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


@numba.njit(parallel=True, fastmath=True)
def to_token_chunks(x, xc):  # pragma: no cover - compiled
    """``xc[c, k, n] = x[c * lanes + n, k]`` (0 past the last token): ``x [N, K]`` in the chunked,
    transposed layout of the tokens-in-lanes order; whole 16 x 16 blocks go through registers."""
    n_tokens, in_features = x.shape
    chunks, lanes = xc.shape[0], xc.shape[2]
    blocks = in_features // 16
    for job in numba.prange(chunks * (blocks + 1)):
        c, kb = job // (blocks + 1), job % (blocks + 1)
        k0, k1 = kb * 16, min(in_features, kb * 16 + 16)
        for half in range(0, lanes, 16):
            n0 = c * lanes + half
            if kb < blocks and n0 + 16 <= n_tokens:
                transpose16(x, n0 * in_features + k0, in_features, xc, (c * in_features + k0) * lanes + half, lanes)
            else:
                for n in range(16):
                    for k in range(k0, k1):
                        xc[c, k, half + n] = x[n0 + n, k] if n0 + n < n_tokens else 0.0


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
    y = torch.empty(x2.shape[0], out_features)
    n_tokens = x2.shape[0]
    if n_tokens >= TOKEN_LANES_MIN:
        xc = np.empty((-(-n_tokens // LANES), in_features, LANES), np.float32)
        to_token_chunks(x2.contiguous().numpy(), xc)
        tokens_in_lanes(xc, crow, col, values, y.numpy(), 4 * numba.get_num_threads())
    else:
        weights_in_lanes(x2.contiguous().numpy(), crow, col, values, y.numpy())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
