"""Dense ``Y = X Wᵀ`` for a few tokens (numba): the dense projections of the compiled decode step,
fp32 or bf16 weights, fp32 activations.

At decode a dense product is a matrix-vector product per token, bound by reading ``W`` once.
A unit is 16 rows; per row it reads ``W[r]`` once and forms the dot product with
every token (the row stays in L1 between tokens), the reduction vectorized by LLVM under
``fastmath`` (reassociation lets it keep several vector accumulators). bf16 weights (their bits,
as int16) are widened to fp32 in registers (:func:`widen`: exact, a shift), so they cost half the
bytes of fp32 and the arithmetic is fp32's. The reference is ``F.linear`` on the fp32 weights.
"""

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from sparsa.kernels.cpu.calls import RowKernel, no_scratch, read_as_is

UNIT = 16  # rows per unit of work: fewer per task and the scheduling outweighs the rows


@intrinsic
def widen(typingctx, value):
    """A weight as fp32: an fp32 one as it is, a bf16 one from its 16 bits (int16), exactly."""
    if value == types.float32:
        return types.float32(value), lambda context, builder, sig, args: args[0]
    if isinstance(value, types.Integer) and value.bitwidth == 16:
        def codegen(context, builder, sig, args):
            bits = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(bits, ir.FloatType())
        return types.float32(value), codegen
    return None


@numba.njit(fastmath=True, error_model="numpy")
def dense_rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
    """Rows ``UNIT first .. UNIT last`` of y[N, M] = x[N, K] w[M, K]^T (x, y fp32; ``operand = (w,)``,
    w fp32, or bf16 bits as int16; every array C-contiguous)."""
    w = operand[0]
    n_tokens = x.shape[0]
    out_features, in_features = w.shape
    for r in range(first * UNIT, min(out_features, last * UNIT)):
        row = w[r]
        for n in range(n_tokens):
            xn = x[n]
            total = np.float32(0.0)
            for k in range(in_features):
                total += widen(row[k]) * xn[k]
            y[n, r] = total


DENSE = RowKernel(read_as_is, dense_rows, UNIT, no_scratch)


def dense_step(weight: torch.Tensor) -> tuple | None:
    """``(RowKernel, operand)`` for the compiled decode step, or None unless ``weight`` is a plain (not
    a tensor subclass, as torchao's are) C-contiguous fp32 or bf16 CPU matrix (it is read in place,
    not copied: bf16 as its int16 bits)."""
    if (type(weight.data) is not torch.Tensor or weight.dtype not in (torch.float32, torch.bfloat16)
            or weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous()):
        return None
    w = weight.detach()
    return DENSE, ((w.view(torch.int16) if w.dtype == torch.bfloat16 else w).numpy(),)
