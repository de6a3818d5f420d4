"""The layer Hessian of the OBS/GPTQ family: accumulation, dead inputs, damping, act-order, H⁻¹.

For a linear layer with inputs ``x`` (one row per token) the layer-wise reconstruction loss
``‖W X - Ŵ X‖²`` has Hessian ``H = (2/n) Σ x xᵀ`` (Frantar & Alistarh, OBC / GPTQ, eq. 1-2).
"""

import logging
from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = (2/n) Σ x xᵀ`` over calibration tokens, in fp32 (fp64 sums on the CPU)."""

    def __init__(self, in_features: int, device="cpu", *, where: str = "layer"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0
        self.where = where

    def add(self, x: torch.Tensor) -> None:
        """Fold in activations ``x: [..., in]`` (any leading shape; each row one token)."""
        x = x.reshape(-1, x.shape[-1]).float()
        if not torch.isfinite(x).all():
            raise SparsaError(f"{self.where}: non-finite calibration activations (inf/nan) reach this layer")
        m = x.shape[0]
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(x.T, x)


@dataclass
class PreparedHessian:
    """What the OBS loop needs.

    Attributes:
        Hinv: [in, in] fp32, upper Cholesky factor of H⁻¹ in the (permuted) solve order.
        perm: [in] int64 solve order (identity unless act_order), ``W[:, perm]`` is solved.
        dead: [in] bool, inputs never active in calibration (their weights are zeroed).
        percdamp_used: damping actually applied (raised if Cholesky failed).
    """

    Hinv: torch.Tensor
    perm: torch.Tensor
    dead: torch.Tensor
    percdamp_used: float


def prepare_hessian(H: torch.Tensor, *, percdamp: float, act_order: bool, where: str) -> PreparedHessian:
    """Dead inputs pinned (``H_jj = 1``), columns ordered by ``diag H`` descending if ``act_order``,
    ``H += percdamp·mean(diag H)·I``, then ``Hinv = chol(H⁻¹)ᵀ`` (upper). If Cholesky fails the
    damping is raised tenfold, up to three times, with a warning; then a SparsaError."""
    if not torch.isfinite(H).all():
        raise SparsaError(f"{where}: the calibration Hessian holds inf/nan")
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(H.shape[0], device=H.device)
    H = H[perm][:, perm]
    mean_diag = torch.diag(H).mean()
    for attempt in range(4):
        damp = percdamp * 10**attempt
        Hd = H + damp * mean_diag * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                if attempt:
                    log.warning("%s: Hessian not positive definite, damping raised to %g", where, damp)
                return PreparedHessian(U, perm, dead, damp)
    raise SparsaError(f"{where}: the calibration Hessian is singular even with damping {damp:g}; "
                      "use more --nsamples or a larger --percdamp")
