"""fp32 block-sparse ``Y = X Wᵀ + b`` on CPU vector units (numba), for any ``R x C`` block.

The weight is BSR (``BlockSparse``): block row ``br`` holds blocks ``crow[br] .. crow[br+1]``,
block ``b`` covering output rows ``br*R .. br*R+R`` and input columns ``col[b]*C .. +C``.

Two loop orders, picked by the token count ``N``:

* **tokens in the vector lanes** (``N >= TOKEN_LANES_MIN``), after the CPU accelerator paper
  (arXiv 2306.16601): ``X`` is cut into chunks of 16 tokens, each copied by the task that
  uses it into ``[K, 16]`` (one 64-byte line per input column); the threads split the chunks
  (and the rows only when chunks are few), so each core reads its own tokens and the shared,
  read-only weight.
  ``1 x C`` blocks accumulate a 16-row x 16-token tile in registers (:mod:`block_steps`) and
  write it to ``Y`` through a register transpose; ``16m x 1`` blocks keep 16 rows in the lanes,
  broadcast each token's activation and store each token's 16 outputs straight into ``Y``;
  other shapes run a plain loop nest over a tile in memory.
* **weights in the vector lanes** (decode, small ``N``): each block's ``R x C`` values meet
  ``C`` contiguous activations of each token; no transposes. For ``C`` a multiple of 16 each
  16 weights are loaded once per group of up to 8 tokens, the accumulators in registers
  (:func:`block_steps.token_rows_step`): 3.5x the plain loop at one token (1536x576, 70%), and
  faster than the tokens-in-lanes order up to ``TOKEN_LANES_MIN_WIDE`` tokens.

Each block shape gets its own compiled pair (``compiled(R, C)``, once per process). Both
accumulate in fp32, so they agree with the dense reference to fp32 rounding.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse
from sparsa.kernels.cpu import block_steps
from sparsa.kernels.cpu.calls import RowKernel, check_activations, no_scratch, parallel, read_as_is, task_span
from sparsa.kernels.cpu.transpose import store_tile, transpose16
from sparsa.kernels.dispatch import register_linear_kernel

TOKEN_LANES_MIN = 4  # below this many tokens the weight-lanes order is faster (measured at 90%, 1 thread)
TOKEN_LANES_MIN_WIDE = 32  # the same for C a multiple of 16 (register-blocked rows; 1536x576 at 70%, 2 threads)
LANES = block_steps.LANES  # tokens per activation chunk: one AVX-512 register of fp32
TASKS_PER_THREAD = 4  # jobs per thread, so uneven rows even out


@dataclass(frozen=True)
class Compiled:
    """The two loop orders for one block shape, and the tile scratch the first one needs per task.

    ``tokens_in_lanes(x, crow, col, values, y, chunk_buffers, pads, tiles, row_parts)``: ``x [N,
    K]``; ``chunk_buffers [tasks, K, 16]``, ``pads [tasks, 16, K]`` and ``tiles [tasks, tile_rows *
    16]`` fp32 scratch (64-byte aligned); the rows cut into ``row_parts`` runs. ``weights_in_lanes``: a
    :class:`~sparsa.kernels.cpu.calls.RowKernel` over block rows (few tokens)."""

    tokens_in_lanes: Callable
    weights_in_lanes: RowKernel
    tile_rows: int


@functools.cache
def compiled(R: int, C: int) -> Compiled:
    """The loop orders compiled for ``R x C`` blocks (once per process): ``1 x C`` and ``16m x 1``
    blocks take the register-blocked steps of :mod:`block_steps`; other shapes a loop nest that
    LLVM unrolls over the block's sides (constants here)."""
    if R == 1:
        rows, units, tile_rows = _row_blocks(C), _tile_units(1), LANES
    elif C == 1 and R % LANES == 0:
        rows, units, tile_rows = _column_blocks(R), _slice_units(R // LANES), LANES
    else:
        group = max(1, LANES // R)  # block rows per output tile: >= 16 rows, whole cache lines of Y per token
        rows, units, tile_rows = _any_blocks(R, C, group), _tile_units(group), max(LANES, group * R)
    return Compiled(_chunk_driver(rows, units), _weights_in_lanes(R, C), tile_rows)


@numba.njit(inline="always", error_model="numpy")
def load_chunk(x, n0, xc, pad):  # pragma: no cover - compiled
    """``xc[k, n] = x[n0 + n, k]`` for ``n < 16`` (0 past the last token): one 16-token chunk of
    ``x [N, K]`` as ``[K, 16]``, whole 16 x 16 blocks through registers. A chunk of fewer than
    16 tokens is first copied into the zero-padded rows of ``pad [16, K]``."""
    n_tokens, in_features = x.shape
    width = min(LANES, n_tokens - n0)
    src, at = x, n0 * in_features
    if width < LANES:
        pad[:width] = x[n0:n0 + width]
        pad[width:] = 0.0
        src, at = pad, 0
    whole = in_features - in_features % LANES
    for k0 in range(0, whole, LANES):
        transpose16(src, at + k0, in_features, xc, k0 * LANES, LANES)
    for k in range(whole, in_features):
        for n in range(LANES):
            xc[k, n] = x[n0 + n, k] if n < width else 0.0


def _chunk_driver(rows_of_chunk, units_of):
    """The tokens-in-lanes order: jobs are (16-token chunk, run of row units); each task copies
    its chunk into a private ``[K, 16]`` buffer (in its own cache, never another core's) and
    calls ``rows_of_chunk`` for the run. Chunks are split first, rows only when there are fewer
    chunks than jobs wanted, so each core reads the weight, shared and read-only, and its own
    tokens."""

    @numba.njit(parallel=True, fastmath=True, error_model="numpy")
    def tokens_in_lanes(x, crow, col, values, y, chunk_buffers, pads, tiles, row_parts):  # pragma: no cover - compiled
        n_tokens, tasks = x.shape[0], tiles.shape[0]
        n_units = units_of(crow.shape[0] - 1)
        per_part = (n_units + row_parts - 1) // row_parts
        jobs = (n_tokens + LANES - 1) // LANES * row_parts
        for task in numba.prange(tasks):
            xc, tile, loaded = chunk_buffers[task], tiles[task], -1
            for job in task_span(task, tasks, jobs):
                chunk, part = job // row_parts, job % row_parts
                if chunk != loaded:
                    load_chunk(x, chunk * LANES, xc, pads[task])
                    loaded = chunk
                n0 = chunk * LANES
                rows_of_chunk(xc, crow, col, values, y, tile, n0, min(LANES, n_tokens - n0),
                              part * per_part, min(n_units, (part + 1) * per_part))

    return tokens_in_lanes


def _tile_units(group: int):
    @numba.njit(inline="always", error_model="numpy")
    def units(n_block_rows):  # pragma: no cover - compiled
        """Output tiles of ``group`` block rows."""
        return (n_block_rows + group - 1) // group

    return units


def _slice_units(parts: int):
    @numba.njit(inline="always", error_model="numpy")
    def units(n_block_rows):  # pragma: no cover - compiled
        """16-row slices of the block rows."""
        return n_block_rows * parts

    return units


def _row_blocks(C: int):
    """``1 x C`` blocks: 16-row tiles, one :func:`block_steps.row_block_step` per row, each tile
    written to ``Y`` through a 16 x 16 register transpose."""
    step = block_steps.row_block_step(C)

    @numba.njit(inline="always", error_model="numpy")
    def rows_of_chunk(xc, crow, col, values, y, tile, n0, width, u0, u1):  # pragma: no cover - compiled
        out_features = y.shape[1]
        for t in range(u0, u1):
            r0 = t * LANES
            rows = min(LANES, out_features - r0)
            for i in range(rows):
                step(tile, i * LANES, xc, 0, values, col, crow[r0 + i], crow[r0 + i + 1])
            store_tile(tile, 0, y, n0, r0, width, rows)

    return rows_of_chunk


def _column_blocks(R: int):
    """``R x 1`` blocks (``R`` a multiple of 16): one :func:`block_steps.column_block_step` per
    16-row slice of a block row, storing straight into ``Y``."""
    step, parts = block_steps.column_block_step, R // LANES

    @numba.njit(inline="always", error_model="numpy")
    def rows_of_chunk(xc, crow, col, values, y, tile, n0, width, u0, u1):  # pragma: no cover - compiled
        out_features = y.shape[1]
        for u in range(u0, u1):
            br, part = u // parts, u % parts
            step(y, n0 * out_features + br * R + part * LANES, out_features, width,
                 xc, 0, values, part * LANES, R, col, crow[br], crow[br + 1])

    return rows_of_chunk


def _any_blocks(R: int, C: int, group: int):
    """Any ``R x C``: tiles of ``group`` block rows accumulated in memory, block by block."""

    @numba.njit(inline="always", error_model="numpy")
    def rows_of_chunk(xc, crow, col, values, y, tile, n0, width, u0, u1):  # pragma: no cover - compiled
        n_block_rows = crow.shape[0] - 1
        for t in range(u0, u1):
            first = t * group
            rows = min(group, n_block_rows - first) * R
            tile[: rows * LANES] = 0.0
            for br in range(first, first + rows // R):
                i0 = (br - first) * R
                for b in range(crow[br], crow[br + 1]):
                    k0 = col[b] * C
                    for i in range(R):
                        for n in range(LANES):
                            acc = tile[(i0 + i) * LANES + n]
                            for j in range(C):
                                acc += values[b, i, j] * xc[k0 + j, n]
                            tile[(i0 + i) * LANES + n] = acc
            for n in range(width):
                for i in range(rows):
                    y[n0 + n, first * R + i] = tile[i * LANES + n]

    return rows_of_chunk


def _token_rows(R: int, C: int) -> RowKernel:
    """The weights-in-lanes order for ``C`` a multiple of 16: per output row, the tokens in groups of
    8, 4, 2 and 1, each group one :func:`block_steps.token_rows_step` (every 16 weights loaded once
    per group, the accumulators in registers)."""
    step8, step4, step2, step1 = (block_steps.token_rows_step(C, T) for T in (8, 4, 2, 1))

    @numba.njit(error_model="numpy")
    def block_rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Block rows ``first .. last`` of y[N, M] = x Wᵀ for x [N, K] (``operand = (crow, col, values)``)."""
        crow, col, values = operand
        n_tokens, in_features = x.shape
        out_features = y.shape[1]
        for br in range(first, last):
            for i in range(R):
                n0, r = 0, br * R + i
                while n0 < n_tokens:
                    args = (y, n0 * out_features + r, out_features, x, n0 * in_features, in_features, values, i * C,
                            R * C, col, crow[br], crow[br + 1])
                    left = n_tokens - n0
                    if left >= 8:
                        step8(*args)
                    elif left >= 4:
                        step4(*args)
                    elif left >= 2:
                        step2(*args)
                    else:
                        step1(*args)
                    n0 += 8 if left >= 8 else 4 if left >= 4 else 2 if left >= 2 else 1

    return RowKernel(read_as_is, block_rows, R, no_scratch)


def _weights_in_lanes(R: int, C: int):
    if C % LANES == 0:
        return _token_rows(R, C)

    @numba.njit(fastmath=True, error_model="numpy")
    def block_rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Block rows ``first .. last`` of y[N, M] = x Wᵀ for x [N, K] (``operand = (crow, col, values)``), every token in each."""
        crow, col, values = operand
        N = x.shape[0]
        acc = np.empty(C, np.float32)
        for br in range(first, last):
            block_row(x, crow, col, values, y, br, N, acc)

    @numba.njit(fastmath=True, error_model="numpy")
    def block_row(x, crow, col, values, y, br, N, acc):  # pragma: no cover - compiled
        """Block row ``br``: per output row, ``C`` partial sums (``acc``) over its blocks, summed once."""
        r0 = br * R
        for n in range(N):
            for i in range(R):
                acc[:] = 0.0
                for b in range(crow[br], crow[br + 1]):
                    k0 = col[b] * C
                    for j in range(C):
                        acc[j] += values[b, i, j] * x[n, k0 + j]
                y[n, r0 + i] = acc.sum()

    return RowKernel(read_as_is, block_rows, R, no_scratch)


def token_lanes_min(C: int) -> int:
    """The token count from which ``1 x C`` .. ``R x C`` blocks take the tokens-in-lanes order."""
    return TOKEN_LANES_MIN_WIDE if C % LANES == 0 else TOKEN_LANES_MIN


def block_step(weight: BlockSparse, tokens: int = 1) -> tuple | None:
    """``(RowKernel, operand)`` for the compiled decode step: the weights-in-lanes order for fewer than
    :func:`token_lanes_min` tokens (a :class:`~sparsa.kernels.cpu.calls.RowKernel`), else None (the
    tokens-in-lanes order needs per-call scratch: those calls go through :func:`block_sparse_linear`)."""
    if tokens >= token_lanes_min(weight.block[1]) or weight.values.dtype != torch.float32:
        return None
    return compiled(*weight.block).weights_in_lanes, tuple(a.contiguous().numpy() for a in (weight.crow, weight.col,
                                                                                            weight.values))


@register_linear_kernel("block", "cpu", (torch.float32,), accepts=lambda w: w.values.dtype == torch.float32,
                        step=block_step)
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
    kernels = compiled(*weight.block)
    y = torch.empty(x2.shape[0], out_features)
    n_tokens = x2.shape[0]
    if n_tokens >= token_lanes_min(weight.block[1]):
        tasks = TASKS_PER_THREAD * numba.get_num_threads()
        # torch allocates 64-byte aligned: every 16-token vector of a chunk is one cache line
        # (numpy's 16-byte alignment split each load across two lines: a 1.5x slower kernel)
        chunk_buffers = torch.empty(tasks, in_features, LANES).numpy()
        pads = torch.empty(tasks, LANES, in_features).numpy()
        tiles = torch.empty(tasks, kernels.tile_rows * LANES).numpy()
        row_parts = -(-tasks // -(-n_tokens // LANES))  # split rows only when chunks are too few
        kernels.tokens_in_lanes(x2.contiguous().numpy(), crow, col, values, y.numpy(), chunk_buffers, pads, tiles,
                                row_parts)
    else:
        parallel(kernels.weights_in_lanes)(x2.contiguous().numpy(), (crow, col, values), (), y.numpy(),
                                           TASKS_PER_THREAD * numba.get_num_threads())
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
