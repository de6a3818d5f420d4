"""fp32 block-sparse ``Y = X Wᵀ + b`` on CPU vector units (numba), for any ``R x C`` block.

The weight is BSR (``BlockSparse``): block row ``br`` holds blocks ``crow[br] .. crow[br+1]``,
block ``b`` covering output rows ``br*R .. br*R+R`` and input columns ``col[b]*C .. +C``.

Two loop orders, picked by the token count ``N``:

* **tokens in the vector lanes** (``N >= TOKEN_LANES_MIN``), after the CPU accelerator paper
  (arXiv 2306.16601): ``X`` is cut into chunks of 16 tokens laid out ``[K, 16]`` (one 64-byte
  line per input column); the threads split the rows into runs and walk every chunk.
  ``1 x C`` blocks accumulate a 16-row x 16-token tile in registers (:mod:`block_steps`) and
  write it to ``Y`` through a register transpose; ``16m x 1`` blocks keep 16 rows in the lanes,
  broadcast each token's activation and store each token's 16 outputs straight into ``Y``;
  other shapes run a plain loop nest over a tile in memory.
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
from sparsa.kernels.cpu import block_steps
from sparsa.kernels.cpu.calls import check_activations, task_span
from sparsa.kernels.cpu.transpose import store_tile, transpose16
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_LANES_MIN = 4  # below this many tokens the weight-lanes order is faster (measured at 90%, 1 thread)
LANES = block_steps.LANES  # tokens per activation chunk: one AVX-512 register of fp32
TASKS_PER_THREAD = 4  # runs of rows per thread, so uneven rows even out


@functools.cache
def compiled(R: int, C: int) -> tuple:
    """The two loop orders compiled for ``R x C`` blocks: ``1 x C`` and ``16m x 1`` blocks take the
    register-blocked steps of :mod:`block_steps`; other shapes a loop nest that LLVM unrolls over
    the block's sides (constants here) and vectorizes over tokens or rows."""
    if R == 1:
        tokens_in_lanes = _row_blocks(C)
    elif C == 1 and R % LANES == 0:
        tokens_in_lanes = _column_blocks(R)
    else:
        tokens_in_lanes = _any_blocks(R, C)
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


def _row_blocks(C: int):
    """Tokens in lanes for ``1 x C`` blocks: 16-row tiles, one :func:`block_steps.row_block_step`
    per row and chunk, each tile written to ``Y`` through a 16 x 16 register transpose."""
    step = block_steps.row_block_step(C)

    @numba.njit(parallel=True, fastmath=True)
    def tokens_in_lanes(xc, crow, col, values, y, tiles):  # pragma: no cover - compiled
        """y[N, M] = X Wᵀ for X as chunks ``xc [N / 16, K, 16]``; ``tiles [tasks, 256]`` scratch
        (64-byte aligned), one per task."""
        n_tokens, out_features = y.shape
        in_features, tasks = xc.shape[1], tiles.shape[0]
        n_tiles = (out_features + LANES - 1) // LANES
        for task in numba.prange(tasks):
            tile = tiles[task]
            for chunk in range(xc.shape[0]):
                n0 = chunk * LANES
                width = min(LANES, n_tokens - n0)
                for t in task_span(task, tasks, n_tiles):
                    r0 = t * LANES
                    rows = min(LANES, out_features - r0)
                    for i in range(rows):
                        step(tile, i * LANES, xc, chunk * in_features * LANES, values, col, crow[r0 + i], crow[r0 + i + 1])
                    store_tile(tile, 0, y, n0, r0, width, rows)

    return tokens_in_lanes


def _column_blocks(R: int):
    """Rows in lanes for ``R x 1`` blocks (``R`` a multiple of 16): one
    :func:`block_steps.column_block_step` per 16-row slice of a block row and chunk, storing
    straight into ``Y``."""
    step = block_steps.column_block_step

    @numba.njit(parallel=True, fastmath=True)
    def tokens_in_lanes(xc, crow, col, values, y, tiles):  # pragma: no cover - compiled
        """y[N, M] = X Wᵀ for X as chunks ``xc [N / 16, K, 16]``; ``tiles`` only gives the task count."""
        n_tokens, out_features = y.shape
        in_features, tasks = xc.shape[1], tiles.shape[0]
        n_jobs = (crow.shape[0] - 1) * (R // LANES)
        for task in numba.prange(tasks):
            for chunk in range(xc.shape[0]):
                n0 = chunk * LANES
                width = min(LANES, n_tokens - n0)
                for job in task_span(task, tasks, n_jobs):
                    br, part = job // (R // LANES), job % (R // LANES)
                    step(y, n0 * out_features + br * R + part * LANES, out_features, width,
                         xc, chunk * in_features * LANES, values, part * LANES, R, col, crow[br], crow[br + 1])

    return tokens_in_lanes


def _any_blocks(R: int, C: int):
    """Tokens in lanes for any ``R x C``: tiles of ``group * R >= 16`` rows accumulated in memory."""
    group = max(1, LANES // R)  # block rows per output tile: >= 16 rows, whole cache lines of Y per token

    @numba.njit(parallel=True, fastmath=True)
    def tokens_in_lanes(xc, crow, col, values, y, tiles):  # pragma: no cover - compiled
        """y[N, M] = X Wᵀ for X as chunks ``xc [N / 16, K, 16]``; ``tiles`` only gives the task count.

        Each task takes a run of block rows; for every chunk of 16 tokens it accumulates ``group``
        block rows in a ``group*R x 16`` tile and writes the tile out row-major."""
        n_tokens, n_block_rows = y.shape[0], crow.shape[0] - 1
        tasks = tiles.shape[0]
        n_tiles = (n_block_rows + group - 1) // group
        for task in numba.prange(tasks):
            tile = np.empty((group * R, LANES), np.float32)
            for chunk in range(xc.shape[0]):
                n0 = chunk * LANES
                width = min(LANES, n_tokens - n0)
                for t in task_span(task, tasks, n_tiles):
                    first = t * group
                    rows = min(group, n_block_rows - first) * R
                    tile[:] = 0.0
                    for br in range(first, first + rows // R):
                        i0 = (br - first) * R
                        for b in range(crow[br], crow[br + 1]):
                            k0 = col[b] * C
                            for i in range(R):
                                for n in range(LANES):
                                    acc = tile[i0 + i, n]
                                    for j in range(C):
                                        acc += values[b, i, j] * xc[chunk, k0 + j, n]
                                    tile[i0 + i, n] = acc
                    for n in range(width):
                        for i in range(rows):
                            y[n0 + n, first * R + i] = tile[i, n]

    return tokens_in_lanes


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
        # torch allocates 64-byte aligned: every 16-token vector of the chunks is one cache line
        # (numpy's 16-byte alignment split each load across two lines: a 1.5x slower kernel)
        xc = torch.empty(-(-n_tokens // LANES), in_features, LANES).numpy()
        to_token_chunks(x2.contiguous().numpy(), xc)
        tiles = torch.empty(TASKS_PER_THREAD * numba.get_num_threads(), LANES * LANES).numpy()
        tokens_in_lanes(xc, crow, col, values, y.numpy(), tiles)
    else:
        weights_in_lanes(x2.contiguous().numpy(), crow, col, values, y.numpy())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
