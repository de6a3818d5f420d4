"""The OBS engine: column-by-column compression with error feedback (GPTQ's lazy-batch loop).

Columns are visited in order; column ``j`` becomes ``q_j = step.column(...)`` and its error,
scaled by the inverse Hessian, is pushed onto the columns not yet visited:
``W[:, j:] -= ((w_j - q_j) / Hinv[j, j]) ⊗ Hinv[j, j:]`` (GPTQ eq. 3 with the upper Cholesky
factor of H⁻¹). Updates stay inside a block of ``blocksize`` columns and reach the rest in one
GEMM per block (GPTQ §4, "lazy batch updates"). The method is the ``ColumnStep``:
GPTQ quantizes, SparseGPT prunes (and quantizes), SpQR quantizes and keeps outliers.
"""

from typing import Protocol

import torch


class ColumnStep(Protocol):
    """Per-method hooks of the OBS loop (positions are in solve order)."""

    def begin_block(self, W1: torch.Tensor, Hinv1: torch.Tensor, start: int) -> None:
        """Called before each block; ``W1: [out, b]`` current block weights, ``Hinv1: [b, b]``."""

    def column(self, W1: torch.Tensor, Hinv1: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """New value ``[out]`` of block column ``i`` (global column ``j``); ``W1[:, i:]`` is up to date."""


def obs_solve(W: torch.Tensor, Hinv: torch.Tensor, step: ColumnStep, blocksize: int = 128):
    """Run the OBS loop over all columns.

    Args:
        W: [out, in] fp32 weight in solve order; not modified.
        Hinv: [in, in] fp32 upper Cholesky factor of H⁻¹ (same order).
        step: the method's hooks.
        blocksize: columns per lazy block.
    Returns:
        Q: [out, in] fp32 new weights; loss: [out] fp32, ``Σ_j (w_j - q_j)² / (2 Hinv_jj²)`` per row
        (the OBS estimate of the added layer loss).
    """
    W = W.clone()
    Q = torch.zeros_like(W)
    loss = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
    for start in range(0, W.shape[1], blocksize):
        end = min(start + blocksize, W.shape[1])
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        Err1 = torch.zeros_like(W1)
        step.begin_block(W1, Hinv1, start)
        for i in range(end - start):
            w, d = W1[:, i].clone(), Hinv1[i, i]
            q = step.column(W1, Hinv1, i, start + i)
            Q[:, start + i] = q
            err = (w - q) / d
            loss += err.square() / 2
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, end:] -= Err1 @ Hinv[start:end, end:]
    return Q, loss
