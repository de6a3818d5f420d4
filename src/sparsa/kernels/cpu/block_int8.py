"""int8 4x1-block sparse ``Y = X Wᵀ + b`` with AVX-512 VNNI (numba + two IR intrinsics).

After the CPU accelerator paper's VNNI kernel (arXiv 2306.16601): the weight is
``BlockSparseInt8`` with 4x1 blocks (four output rows x one input column), the activations are
quantized per token to uint8 on the fly, and the tokens sit in the vector lanes:

1. ``xq[k, n] = round(x[n, k] / sx[n]) + 128`` (uint8, ``sx[n] = max_k |x[n, k]| / 127``), laid
   out ``[in, Np]`` with the token count padded to ``Np``, a multiple of 16;
2. a block row's blocks are taken four at a time (the last group padded with zero weights);
   the four activation rows they name are interleaved into 4-byte lanes, and each of the four
   output rows adds one ``vpdpbusd`` per 16 tokens (its four int8 weights broadcast);
3. ``y[n, r] = sx[n] * scale[r] * (acc[r, n] - 128 * rowsum[r])`` undoes the uint8 offset
   (``rowsum[r]``: the sum of row ``r``'s codes, gathered on the way).

Integer accumulation is exact, so the result equals ``kernels.reference.int8_linear_reference``
up to the final fp32 scaling; against fp32 it carries the activation and weight rounding (~1%).
"""

import numba
import numpy as np
import torch

from sparsa.errors import SparsaError
from sparsa.formats.block_int8 import BlockSparseInt8
from sparsa.kernels.cpu.calls import check_activations
from sparsa.kernels.cpu.vnni import HAS_VNNI, dpbusd16, interleave4
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.reference import quantize_tokens

LANES = 16  # int32 lanes of one vpdpbusd


@numba.njit(parallel=True, fastmath=True, cache=True)
def _block_int8_4x1(xq, padded, crow, col, codes, sx, scale, y, tasks):  # pragma: no cover - compiled
    """y[N, M] from xq [K * padded] uint8 (row k at k * padded), codes [nnzb * 4] int8."""
    n_tokens, n_block_rows = y.shape[0], crow.shape[0] - 1
    per_task = (n_block_rows + tasks - 1) // tasks
    for task in numba.prange(tasks):
        lanes = np.empty(4 * padded, np.uint8)
        acc = np.empty(4 * padded, np.int32)
        for br in range(task * per_task, min(n_block_rows, (task + 1) * per_task)):
            acc[:] = 0
            first, end = crow[br], crow[br + 1]
            rowsum = np.zeros(4, np.int64)
            for g in range(first, end, 4):
                full = end - g >= 4
                last = end - 1
                k0, k1 = col[g], col[min(g + 1, last)]
                k2, k3 = col[min(g + 2, last)], col[min(g + 3, last)]
                for c in range(0, padded, 16):
                    interleave4(lanes, 4 * c, xq, k0 * padded + c, k1 * padded + c, k2 * padded + c, k3 * padded + c)
                for i in range(4):
                    at = g * 4 + i
                    packed = np.int64(codes[at]) & 0xFF
                    rowsum[i] += codes[at]
                    for u in range(1, 4):
                        if full or g + u < end:
                            packed |= (np.int64(codes[at + 4 * u]) & 0xFF) << (8 * u)
                            rowsum[i] += codes[at + 4 * u]
                    if packed != 0:
                        w = np.int32(packed)
                        for c in range(0, padded, 16):
                            dpbusd16(acc, i * padded + c, lanes, 4 * c, w)
            for n in range(n_tokens):
                for i in range(4):
                    r = br * 4 + i
                    y[n, r] = sx[n] * scale[r] * np.float32(acc[i * padded + n] - 128 * rowsum[i])


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
    lead, (out_features, in_features) = x.shape[:-1], weight.shape
    x2 = x.detach().reshape(-1, in_features)
    n_tokens = x2.shape[0]
    padded = max(LANES, -(-n_tokens // LANES) * LANES)
    xq, sx = quantize_tokens(x2)
    xq_t = torch.full((in_features, padded), 128, dtype=torch.uint8)
    xq_t[:, :n_tokens] = xq.t()
    y = torch.empty(n_tokens, out_features)
    tasks = 4 * numba.get_num_threads()
    _block_int8_4x1(xq_t.reshape(-1).numpy(), padded, weight.crow.contiguous().numpy(),
                    weight.col.contiguous().numpy(), weight.values.contiguous().reshape(-1).numpy(),
                    sx.numpy(), weight.scale.contiguous().numpy(), y.numpy(), tasks)
    if bias is not None:
        y += bias
    return y.reshape(*lead, out_features)
