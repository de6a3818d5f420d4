"""The damped Gauss-Newton system of bundle adjustment, reduced to the cameras (Schur complement).

Order the unknowns [cameras c | points p]. With g = Jᵀr and damping D (mu: trust-region radius):
``[[U, W], [Wᵀ, V]] + D/mu``, V block-diagonal (3x3 per point). Eliminating the points gives
the reduced camera system ``S dc = -g_c + W V⁻¹ g_p`` with ``S = U - W V⁻¹ Wᵀ`` and the back
substitution ``dp = -V⁻¹ (g_p + Wᵀ dc)`` (Triggs et al., "Bundle adjustment - a modern synthesis", §6.1).

Nothing of size cameras x points is stored: U, W and S are applied through the per-observation
blocks Jc [M, 2, dc] and Jx [M, 2, 3] (gathers and ``index_add_``), so memory is linear in the
observations. :meth:`SchurSystem.dense` builds S explicitly (point chunks) for few cameras.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from sparsa.sfm.comm import LocalComm
from sparsa.sfm.lsq import Linearization, Problem

CHUNK = 1 << 18  # observations per chunk when forming per-observation dc x dc products


def csr_order(index: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr [n + 1], order [M]) int64: the observations with index b are order[ptr[b]:ptr[b + 1]]."""
    idx = index.cpu().numpy()
    counts = np.bincount(idx, minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.argsort(idx, kind="stable").astype(np.int64)


@dataclass
class SchurLayout:
    """CSR orders of the observations by point and by each kind of camera block, built once per
    problem for the CPU kernels (:mod:`sparsa.kernels.cpu.schur`)."""

    point: tuple[np.ndarray, np.ndarray]
    blocks: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, problem: Problem) -> "SchurLayout":
        return cls(csr_order(problem.obs_point, problem.n_points),
                   [csr_order(k.index, k.count) for k in problem.camera_blocks])


class SchurSystem:
    """The damped system at one linearization, for one trust-region radius ``mu``."""

    def __init__(self, problem: Problem, lin: Linearization, diag_c: torch.Tensor, diag_p: torch.Tensor,
                 mu: float, comm: LocalComm = LocalComm(), layout: SchurLayout | None = None):
        """diag_c [C_total], diag_p [P, 3]: the clamped diag(JᵀJ) (fixed unknowns: 1, no 1/mu).
        ``comm`` completes camera-side sums when the points are split across processes; with a
        ``layout`` (CPU tensors only) the products run in the numba kernels, otherwise in torch."""
        self.problem, self.lin, self.comm, self.layout = problem, lin, comm, layout
        self.damp_c = torch.where(problem.free_camera, diag_c / mu, torch.ones_like(diag_c))
        free_p = problem.free_point[:, None].expand_as(diag_p)
        damp_p = torch.where(free_p, diag_p / mu, torch.ones_like(diag_p))
        V = self.point_blocks() + torch.diag_embed(damp_p)
        self.V_inv = torch.linalg.inv(V)  # [P, 3, 3] SPD 3x3 blocks

    @cached_property
    def sorted_columns(self) -> list[np.ndarray]:
        """Each camera block's Jacobian columns in block order [M, R, size] (sequential reads in
        :func:`~sparsa.kernels.cpu.schur.scatter_block`)."""
        Jc = self.lin.Jc.numpy()
        return [np.ascontiguousarray(Jc[order][:, :, k.column:k.column + k.size])
                for k, (_, order) in zip(self.problem.camera_blocks, self.layout.blocks)]

    # -- products with the blocks of JᵀJ ------------------------------------------------------
    def point_blocks(self) -> torch.Tensor:
        """V = Σ_o Jxᵀ Jx per point: [P, 3, 3]."""
        Jx = self.lin.Jx
        V = Jx.new_zeros(self.problem.n_points, 3, 3)
        return V.index_add_(0, self.problem.obs_point, Jx.transpose(1, 2) @ Jx)

    def camera_vector(self, per_obs: torch.Tensor) -> torch.Tensor:
        """Σ over observations (of every process) of per_obs [M, C] into a camera-side vector [C_total]."""
        out = per_obs.new_zeros(self.problem.n_camera_unknowns)
        return self.comm.sum_(out.index_add_(0, self.problem.cols.reshape(-1), per_obs.reshape(-1)))

    def point_vector(self, per_obs: torch.Tensor) -> torch.Tensor:
        """Σ over observations of per_obs [M, 3] into a point vector [P, 3]."""
        return per_obs.new_zeros(self.problem.n_points, 3).index_add_(0, self.problem.obs_point, per_obs)

    def J_c(self, x: torch.Tensor) -> torch.Tensor:
        """Jc x for camera-side x [C_total]: [M, 2]."""
        return (self.lin.Jc @ x[self.problem.cols][:, :, None])[..., 0]

    def Wt(self, x: torch.Tensor) -> torch.Tensor:
        """Wᵀ x: [P, 3]."""
        return self.point_vector((self.lin.Jx.transpose(1, 2) @ self.J_c(x)[:, :, None])[..., 0])

    def W(self, z: torch.Tensor) -> torch.Tensor:
        """W z for a point vector z [P, 3]: camera-side [C_total]."""
        Jz = (self.lin.Jx @ z[self.problem.obs_point][:, :, None])  # [M, 2, 1]
        return self.camera_vector((self.lin.Jc.transpose(1, 2) @ Jz)[..., 0])

    # -- the reduced camera system ------------------------------------------------------------
    def gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_c [C_total], g_p [P, 3]) with g = Jᵀ r."""
        r = self.lin.r[:, :, None]
        g_c = self.camera_vector((self.lin.Jc.transpose(1, 2) @ r)[..., 0])
        g_p = self.point_vector((self.lin.Jx.transpose(1, 2) @ r)[..., 0])
        return g_c, g_p

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """S x = (U + D_c/mu) x - W V⁻¹ Wᵀ x, matrix-free: [C_total]."""
        if self.layout is None:
            return self.matvec_reference(x)
        from sparsa.kernels.cpu.schur import reduced_residual, scatter_block

        Jc, Jx = self.lin.Jc.numpy(), self.lin.Jx.numpy()
        a = np.empty(Jc.shape[:2])
        reduced_residual(Jc, Jx, self.problem.cols.numpy(), x.numpy(), self.V_inv.numpy(), *self.layout.point, a)
        out = np.zeros(self.problem.n_camera_unknowns)
        for k, (ptr, order), J in zip(self.problem.camera_blocks, self.layout.blocks, self.sorted_columns):
            scatter_block(J, a, ptr, order, k.offset, out)
        return self.comm.sum_(torch.from_numpy(out)) + self.damp_c * x

    def matvec_reference(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`matvec` with torch gathers, batched products and ``index_add_``."""
        Jc_x = self.J_c(x)  # [M, 2]
        z = self.V_inv @ self.point_vector((self.lin.Jx.transpose(1, 2) @ Jc_x[:, :, None])[..., 0])[:, :, None]
        Jx_z = (self.lin.Jx @ z[self.problem.obs_point])[..., 0]  # [M, 2]: Jx V⁻¹ Wᵀ x
        return self.camera_vector((self.lin.Jc.transpose(1, 2) @ (Jc_x - Jx_z)[:, :, None])[..., 0]) + self.damp_c * x

    def rhs(self, g_c: torch.Tensor, g_p: torch.Tensor) -> torch.Tensor:
        """-g_c + W V⁻¹ g_p."""
        return -g_c + self.W((self.V_inv @ g_p[:, :, None])[..., 0])

    def back_substitute(self, dc: torch.Tensor, g_p: torch.Tensor) -> torch.Tensor:
        """dp = -V⁻¹ (g_p + Wᵀ dc): [P, 3]."""
        return -(self.V_inv @ (g_p + self.Wt(dc))[:, :, None])[..., 0]

    def block_jacobi(self) -> list[torch.Tensor]:
        """Inverses of S's diagonal blocks, one [count, size, size] tensor per kind of camera block
        (:attr:`Problem.camera_blocks`, e.g. poses and intrinsics).

        Each observation adds ``Jcᵀ Jc - W_o V⁻¹ W_oᵀ`` (W_o = Jcᵀ Jx) to its blocks; exact when no
        point is seen twice through one block, a preconditioner either way."""
        p = self.problem
        kinds = p.camera_blocks
        blocks = [self.lin.Jc.new_zeros(k.count, k.size, k.size) for k in kinds]
        if self.layout is None:
            self.jacobi_blocks_reference(blocks)
        else:
            from sparsa.kernels.cpu.schur import jacobi_block

            for k, out, (ptr, order) in zip(kinds, blocks, self.layout.blocks):
                jacobi_block(self.lin.Jc.numpy(), self.lin.Jx.numpy(), self.V_inv.numpy(), p.obs_point.numpy(), ptr,
                             order, k.column, k.size, out.numpy())
        for k, out in zip(kinds, blocks):
            self.comm.sum_(out)
            out += torch.diag_embed(self.damp_c[k.offset:k.offset + k.count * k.size].view(k.count, k.size))
        return [torch.linalg.inv(b) for b in blocks]

    def jacobi_blocks_reference(self, blocks: list[torch.Tensor]) -> None:
        """Add each observation's ``Jcᵀ Jc - W_o V⁻¹ W_oᵀ`` to its diagonal blocks, in torch (chunks)."""
        p = self.problem
        for s in range(0, p.obs_point.shape[0], CHUNK):
            Jc, Jx = self.lin.Jc[s:s + CHUNK], self.lin.Jx[s:s + CHUNK]
            W = Jc.transpose(1, 2) @ Jx  # [m, C, 3]
            B = Jc.transpose(1, 2) @ Jc - W @ self.V_inv[p.obs_point[s:s + CHUNK]] @ W.transpose(1, 2)
            for k, out in zip(p.camera_blocks, blocks):
                out.index_add_(0, k.index[s:s + CHUNK], B[:, k.column:k.column + k.size, k.column:k.column + k.size])

    def precondition(self, inverses: list[torch.Tensor], r: torch.Tensor) -> torch.Tensor:
        """Apply the block-Jacobi inverses to a camera-side vector r [C_total]."""
        out = torch.empty_like(r)
        for k, inv in zip(self.problem.camera_blocks, inverses):
            part = slice(k.offset, k.offset + k.count * k.size)
            out[part] = (inv @ r[part].view(k.count, k.size, 1)).reshape(-1)
        return out

    def dense(self) -> torch.Tensor:
        """S as a dense [D, D] matrix, D = camera-side unknowns."""
        if self.layout is None:
            return self.dense_reference()
        from sparsa.kernels.cpu.schur import dense_rows

        p = self.problem
        S = np.zeros((p.n_camera_unknowns, p.n_camera_unknowns))
        for k, (ptr, order) in zip(p.camera_blocks, self.layout.blocks):
            dense_rows(self.lin.Jc.numpy(), self.lin.Jx.numpy(), p.cols.numpy(), self.V_inv.numpy(), p.obs_point.numpy(),
                       *self.layout.point, ptr, order, k.column, k.size, k.offset, S)
        S = self.comm.sum_(torch.from_numpy(S))
        S.diagonal().add_(self.damp_c)
        return S

    def dense_reference(self) -> torch.Tensor:
        """:meth:`dense` in torch (memory D² plus a point chunk x D)."""
        p = self.problem
        D = p.n_camera_unknowns
        S = self.lin.Jc.new_zeros(D * D)
        cols = p.cols
        for s in range(0, cols.shape[0], CHUNK):
            Jc = self.lin.Jc[s:s + CHUNK]
            c = cols[s:s + CHUNK]
            S.index_add_(0, (c[:, :, None] * D + c[:, None, :]).reshape(-1), (Jc.transpose(1, 2) @ Jc).reshape(-1))
        S = S.view(D, D)
        points_per_chunk = max(1, (1 << 24) // (3 * D))
        for p0 in range(0, p.n_points, points_per_chunk):
            p1 = min(p.n_points, p0 + points_per_chunk)
            sel = ((p.obs_point >= p0) & (p.obs_point < p1)).nonzero()[:, 0]
            W = self.lin.Jc.new_zeros((p1 - p0) * 3, D)  # Wᵀ rows of this chunk's points
            blocks = self.lin.Jx[sel].transpose(1, 2) @ self.lin.Jc[sel]  # [m, 3, dc]
            rows = (3 * (p.obs_point[sel] - p0))[:, None, None] + torch.arange(3, device=S.device)[None, :, None]
            W.view(-1).index_add_(0, (rows * D + cols[sel][:, None, :]).reshape(-1), blocks.reshape(-1))
            VW = self.V_inv[p0:p1] @ W.view(p1 - p0, 3, D)  # V⁻¹ Wᵀ, point by point
            S -= W.T @ VW.reshape(-1, D)
        self.comm.sum_(S)
        S.diagonal().add_(self.damp_c)
        return S
