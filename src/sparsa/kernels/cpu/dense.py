"""Dense ``Y = X Wᵀ`` for a few tokens (numba): the dense projections of the compiled decode step,
fp32 or bf16 weights, fp32 activations.

At decode a dense product is a matrix-vector product per token, bound by reading ``W`` once.
A unit is 16 rows; per row it reads ``W[r]`` once and forms the dot product with
every token (the row stays in L1 between tokens), the reduction vectorized by LLVM under
``fastmath`` (reassociation lets it keep several vector accumulators). bf16 weights (their bits,
as int16) are widened to fp32 in registers (:func:`widen`: exact, a shift), so they cost half the
bytes of fp32 and the arithmetic is fp32's. The reference is ``F.linear`` on the fp32 weights.
Prefill's dense products take :func:`dense_linear`.
"""

import numba
import numpy as np
import torch
import torch.nn.functional as F
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


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN and its linear op (``mkldnn::_linear_pointwise``, the one
    torch.compile's CPU backend emits)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return False
    return True


ONEDNN_LINEAR = onednn_linear_available()


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for many tokens (prefill): oneDNN's GEMM for a plain fp32 CPU weight, read in
    place (no packed copy), else ``F.linear``.

    ``F.linear`` takes MKL's sgemm for fp32 on the CPU; oneDNN's ran 1.15-1.3x faster at 32 and 512
    tokens on SmolLM2's shapes (2 threads, AMD Zen 4, 2026-12-07), and bf16 ``F.linear`` already
    takes oneDNN. The sums are fp32 in another order, so results differ from ``F.linear`` by fp32
    rounding.

    Args:
        x: [..., in]; weight: [out, in]; bias: [out] or None.
    Returns:
        [..., out] in x's dtype.
    """
    if (ONEDNN_LINEAR and x.dtype == torch.float32 and type(weight.data) is torch.Tensor
            and weight.dtype == torch.float32 and x.device.type == "cpu" and weight.dim() == 2 and x.numel()):
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)
