"""Dense fp32 ``Y = X Wᵀ`` for a few tokens (numba): the dense projections of the compiled decode step.

At decode a dense product is a matrix-vector product per token, bound by reading ``W`` once.
Each task takes a run of rows; per row it reads ``W[r]`` once and forms the dot product with
every token (the row stays in L1 between tokens), the reduction vectorized by LLVM under
``fastmath`` (reassociation lets it keep several vector accumulators). The reference is
``F.linear``.
"""

import numba
import numpy as np
import torch

ROWS_PER_TASK_MIN = 16  # fewer rows per task than this and the region's overhead outweighs the split


@numba.njit(parallel=True, fastmath=True)
def dense_rows(x, w, y, tasks):  # pragma: no cover - compiled
    """y[N, M] = x[N, K] w[M, K]^T (fp32, every array C-contiguous)."""
    n_tokens = x.shape[0]
    out_features, in_features = w.shape
    tasks = max(1, min(tasks, out_features // ROWS_PER_TASK_MIN))
    per_task = (out_features + tasks - 1) // tasks
    for task in numba.prange(tasks):
        for r in range(task * per_task, min(out_features, (task + 1) * per_task)):
            row = w[r]
            for n in range(n_tokens):
                xn = x[n]
                total = np.float32(0.0)
                for k in range(in_features):
                    total += row[k] * xn[k]
                y[n, r] = total


def dense_step(weight: torch.Tensor) -> tuple | None:
    """``(kernel, operand)`` for the compiled decode step (``kernel(x, *operand, y, tasks)``), or None
    unless ``weight`` is a plain (not a tensor subclass, as torchao's are) C-contiguous fp32 CPU matrix
    (it is read in place, not copied)."""
    if type(weight.data) is not torch.Tensor or weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous():
        return None
    return dense_rows, (weight.detach().numpy(),)
