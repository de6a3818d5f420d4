"""int8 4x1-block sparse ``Y = X Wᵀ + b`` with AVX-512 VNNI (numba + an IR intrinsic).

After the CPU accelerator paper's VNNI kernel (arXiv 2306.16601; ITREX's "4x1": four output
rows x one input column): the weight is ``BlockSparseInt8`` with 4x1 blocks, the activations
are quantized per token to uint8 on the fly, and the tokens sit in the vector lanes:

1. ``xq[n, k] = round(x[n, k] / sx[n]) + 128`` (uint8, ``sx[n] = max_k |x[n, k]| / 127``), in
   chunks of ``16 * vectors`` tokens, ``[K, 16 * vectors]`` per chunk (padded with 128);
2. once per weight (:func:`int8_layout`), each block row's blocks are taken four at a time
   (the last group padded with zero codes): the group's four columns, and for each of the four
   output rows its four codes packed in one int32;
3. :func:`sparsa.kernels.cpu.vnni.int8_block_row_step` runs one block row over one chunk (the
   tasks split the chunks first, the rows only when chunks are few) with
   the int32 sums in registers and writes ``sx[n] * scale[r] * (acc - 128 * rowsum[r])`` into a
   16-row tile, which a register transpose stores into ``Y``.

Integer accumulation is exact, so the result equals ``kernels.reference.int8_linear_reference``
up to fp32 rounding of the final scaling; against fp32 it carries the activation and weight
rounding (~1%).
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch

from sparsa.errors import SparsaError
from sparsa.formats.block_int8 import BlockSparseInt8
from sparsa.kernels.cpu.calls import check_activations, task_span
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.cpu.transpose import store_tile, transpose16
from sparsa.kernels.cpu.vnni import HAS_VNNI, LANES, ROWS, int8_block_row_step
from sparsa.kernels.dispatch import register_linear_kernel

MAX_VECTORS = 4  # token vectors per chunk: 64 tokens, 16 int32 accumulators in registers
TASKS_PER_THREAD = 4  # runs of rows per thread, so uneven rows even out


@dataclass(frozen=True)
class Int8Layout:
    """A 4x1 ``BlockSparseInt8`` in the order the VNNI step reads it (G groups of four blocks).

    Attributes:
        group_ptr: [out / 4 + 1] int32, block row ``br`` owns groups ``group_ptr[br] .. [br+1]``.
        group_col: [G * 4] int32, the four input columns of each group (0 for padding).
        group_codes: [G * 4] int32, for each group and output row the four int8 codes (byte t
            for the group's column t; 0 for padding).
        offset: [out] int32, ``128 * sum`` of each row's codes.
    """

    group_ptr: torch.Tensor
    group_col: torch.Tensor
    group_codes: torch.Tensor
    offset: torch.Tensor


def int8_layout(weight: BlockSparseInt8) -> Int8Layout:
    """Group the blocks of each block row four at a time (see :class:`Int8Layout`)."""
    crow, col = weight.crow.long(), weight.col.long()
    counts = crow.diff()
    group_ptr = torch.cat([counts.new_zeros(1), ((counts + ROWS - 1) // ROWS).cumsum(0)])
    n_groups = int(group_ptr[-1])
    block_row = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    position = torch.arange(col.numel()) - crow[block_row]
    slot = group_ptr[block_row] * ROWS + position  # group * 4 + (position % 4)
    group_col = torch.zeros(n_groups * ROWS, dtype=torch.int32)
    group_col[slot] = col.to(torch.int32)
    codes = torch.zeros(n_groups, ROWS, ROWS, dtype=torch.uint8)  # [group, row, column slot]
    codes[slot // ROWS, :, slot % ROWS] = weight.values.reshape(-1, ROWS).view(torch.uint8)
    row_sums = torch.zeros(weight.shape[0], dtype=torch.int64)
    row_sums.view(-1, ROWS).index_add_(0, block_row, weight.values.reshape(-1, ROWS).long())
    return Int8Layout(group_ptr.to(torch.int32), group_col, codes.view(torch.int32).reshape(-1),
                      (128 * row_sums).to(torch.int32))


@numba.njit(fastmath=True)
def _peak(row):  # pragma: no cover - compiled
    """max |row| (fastmath only reorders the max, which is exact in any order)."""
    peak = np.float32(0.0)
    for value in row:
        peak = max(peak, abs(value))
    return peak


@numba.njit(parallel=True)
def quantize_chunks(x, xc, sx):  # pragma: no cover - compiled; no fastmath: it must equal the reference bit for bit
    """``kernels.reference.quantize_tokens`` in the kernel's chunk layout: ``x [N, K]`` fp32 ->
    ``xc[c, k, n] = round(x[c * width + n, k] / sx[c * width + n]) + 128`` (``xc [chunks, K,
    width]`` uint8, 128 past the last token) and ``sx [chunks * width]`` (0 past the last token).
    Each job moves a 16-column slice of a chunk through a 16 x 16 register transpose, then
    quantizes it with contiguous (vectorized, exact) divisions."""
    n_tokens, in_features = x.shape
    chunks, width = xc.shape[0], xc.shape[2]
    for n in numba.prange(chunks * width):
        step = _peak(x[n]) / np.float32(127.0) if n < n_tokens else np.float32(0.0)
        sx[n] = step if step > 0 or n >= n_tokens else np.float32(1.0)
    blocks = (in_features + LANES - 1) // LANES
    for job in numba.prange(chunks * blocks):
        c, k0 = job // blocks, (job % blocks) * LANES
        columns = min(LANES, in_features - k0)
        tmp = np.empty((LANES, width), np.float32)  # [column, token]
        for v in range(0, width, LANES):
            n0 = c * width + v
            if columns == LANES and n0 + LANES <= n_tokens:
                transpose16(x, n0 * in_features + k0, in_features, tmp, v, width)
            else:
                for n in range(LANES):
                    for k in range(LANES):
                        tmp[k, v + n] = x[n0 + n, k0 + k] if n0 + n < n_tokens and k < columns else np.float32(0.0)
        scale = sx[c * width:(c + 1) * width]
        for k in range(columns):
            for n in range(width):
                if c * width + n < n_tokens:
                    code = np.round(tmp[k, n] / scale[n])
                    xc[c, k0 + k, n] = np.uint8(min(max(code, np.float32(-127.0)), np.float32(127.0)) + np.float32(128.0))
                else:
                    xc[c, k0 + k, n] = 128


@functools.cache
def compiled(vectors: int):
    """The kernel for chunks of ``16 * vectors`` tokens (once per process)."""
    step, width = int8_block_row_step(vectors), LANES * vectors

    @numba.njit(parallel=True)
    def run(xc, sx, group_ptr, group_col, group_codes, scale, offset, y, tiles, row_parts):  # pragma: no cover - compiled
        """y[N, M] from :func:`quantize_chunks`' ``xc [chunks, K, width]`` and ``sx``. Jobs are
        (chunk, run of 16-row tiles), chunks split first, so a core reads few chunks and the
        shared weight; ``tiles [tasks, vectors * 256]`` fp32 scratch."""
        n_tokens, out_features = y.shape
        in_features, tasks = xc.shape[1], tiles.shape[0]
        n_tiles = (out_features + LANES - 1) // LANES
        per_part = (n_tiles + row_parts - 1) // row_parts
        jobs = (n_tokens + width - 1) // width * row_parts
        for task in numba.prange(tasks):
            tile = tiles[task]
            for job in task_span(task, tasks, jobs):
                chunk, part = job // row_parts, job % row_parts
                n0 = chunk * width
                for t in range(part * per_part, min(n_tiles, (part + 1) * per_part)):
                    r0 = t * LANES
                    rows = min(LANES, out_features - r0)
                    for q in range(rows // ROWS):
                        br = r0 // ROWS + q
                        step(tile, LANES * ROWS * q, xc, chunk * in_features * width, group_col, group_codes,
                             group_ptr[br], group_ptr[br + 1], sx, n0, scale, offset, r0 + ROWS * q)
                    for v in range(vectors):
                        nv = n0 + LANES * v
                        store_tile(tile, LANES * LANES * v, y, nv, r0, max(0, min(LANES, n_tokens - nv)), rows)

    return run


def vnni_ready(weight) -> bool:
    """Whether the kernel takes this weight on this CPU: 4x1 blocks and AVX-512 VNNI."""
    return HAS_VNNI and tuple(weight.block) == (4, 1)


@register_linear_kernel("block_int8", "cpu", (torch.float32,), accepts=vnni_ready)
def block_int8_linear(x: torch.Tensor, weight: BlockSparseInt8, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for a 4x1 ``BlockSparseInt8`` weight and fp32 activations (no autograd).

    Args:
        x: [..., in] fp32.
        weight: BlockSparseInt8 W [out, in] with 4x1 blocks.
        bias: [out] or None.
    Returns:
        [..., out] fp32.
    """
    check_activations(x, weight, torch.float32)
    if tuple(weight.block) != (4, 1):
        raise SparsaError(f"the int8 VNNI kernel takes 4x1 blocks, got {weight.block[0]}x{weight.block[1]}")
    if not HAS_VNNI:
        raise SparsaError("the int8 block kernel needs AVX-512 VNNI, which this CPU lacks; "
                          "sparsa.kernels.linear runs the reference instead")
    layout = cached_layout(weight, int8_layout)
    lead, (out_features, in_features) = x.shape[:-1], weight.shape
    x2 = x.detach().reshape(-1, in_features)
    n_tokens = x2.shape[0]
    y = torch.empty(n_tokens, out_features)
    if n_tokens == 0:
        return (y if bias is None else y + bias).reshape(*lead, out_features)
    vectors = min(MAX_VECTORS, -(-n_tokens // LANES))
    width, tasks = LANES * vectors, TASKS_PER_THREAD * numba.get_num_threads()
    chunks = -(-n_tokens // width)
    xc = torch.empty(chunks, in_features, width, dtype=torch.uint8)  # 64-byte aligned
    sx, tiles = torch.empty(chunks * width), torch.empty(tasks, vectors * LANES * LANES)
    quantize_chunks(x2.contiguous().numpy(), xc.numpy(), sx.numpy())
    row_parts = -(-tasks // chunks)  # split rows only when chunks are too few
    compiled(vectors)(xc.numpy(), sx.numpy(), layout.group_ptr.numpy(), layout.group_col.numpy(),
                      layout.group_codes.numpy(), weight.scale.contiguous().numpy(), layout.offset.numpy(),
                      y.numpy(), tiles.numpy(), row_parts)
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
