"""Rotation averaging: world-to-camera rotations ``R_i`` from relative rotations
``R_ij = cam_j_from_cam_i ≈ R_j R_iᵀ`` (Chatterjee & Govindu's L1-IRLS, on torch, CPU or CUDA).

Start: the maximum spanning tree over inlier counts, rotations chained from its root.

Refinement, with the right perturbation ``R_i <- R_i exp(w_i)``: to first order
``R_jᵀ R_ij R_i ≈ exp(w_j - w_i)``, so each iteration takes the residuals
``r_ij = log(R_jᵀ R_ij R_i)`` [E, 3] and solves the weighted least squares
``min Σ ρ_ij |r_ij - (w_j - w_i)|²``. Its normal matrix is the weighted graph Laplacian (the same
for the three axes), with a prior on image 0 fixing the gauge; it is solved by a dense Cholesky
(N x N: 8 MB and milliseconds at 1000 images). Weights: first ``l1_iterations`` L1 steps, each
the L1 solution of its linearization by ``L1_INNER`` reweighted solves (``ρ = 1 / max(|r - (w_j - w_i)|, eps)``), then Geman-McClure IRLS (``ρ = σ² / (σ² + |r|²)²``, σ in degrees).
"""

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from sparsa.data.rotations import angle_axis_to_matrix, matrix_to_angle_axis
from sparsa.sfm.config import RotationAveragingOptions

L1_INNER = 10  # reweighted solves per L1 linearization


@dataclass
class RotationAveragingReport:
    iterations: int
    median_residual_deg: float


def spanning_tree_rotations(n: int, pairs: torch.Tensor, R: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n, 3, 3] rotations chained along the maximum-weight spanning tree from its first node
    (nodes outside the root's component stay identity)."""
    p = pairs.numpy()
    cost = 1.0 / (1.0 + weights.double().numpy())  # minimum spanning tree of 1 / weight: the maximum of weight
    tree = minimum_spanning_tree(scipy.sparse.coo_matrix((cost, (p[:, 0], p[:, 1])), shape=(n, n)))
    order, parent = breadth_first_order(tree, 0, directed=False)
    edge = {(int(a), int(b)): e for e, (a, b) in enumerate(p)}
    out = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    for node in order[1:]:
        up = int(parent[node])
        if (up, int(node)) in edge:  # R_node = R_(up->node) R_up
            out[node] = R[edge[(up, int(node))]] @ out[up]
        else:  # stored as (node, up): R_up = R_e R_node
            out[node] = R[edge[(int(node), up)]].T @ out[up]
    return out


def residuals(rotations: torch.Tensor, pairs: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """[E, 3] ``log(R_jᵀ R_ij R_i)`` (radians, angle-axis)."""
    Ri, Rj = rotations[pairs[:, 0]], rotations[pairs[:, 1]]
    return matrix_to_angle_axis(Rj.transpose(1, 2) @ R @ Ri)


def laplacian_step(n: int, pairs: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[n, 3] the ``w`` minimising ``Σ w_e |r_e - (w_j - w_i)|² + (Σ w) |w_0|²``."""
    i, j = pairs[:, 0], pairs[:, 1]
    L = torch.zeros(n, n, dtype=r.dtype, device=r.device)
    L.index_put_((i, i), w, accumulate=True)
    L.index_put_((j, j), w, accumulate=True)
    L.index_put_((i, j), -w, accumulate=True)
    L.index_put_((j, i), -w, accumulate=True)
    L[0, 0] += w.sum()
    b = torch.zeros(n, 3, dtype=r.dtype, device=r.device)
    b.index_add_(0, j, w[:, None] * r)
    b.index_add_(0, i, -w[:, None] * r)
    return torch.cholesky_solve(b, torch.linalg.cholesky(L))


def average_rotations(n: int, pairs: torch.Tensor, R: torch.Tensor, weights: torch.Tensor,
                      options: RotationAveragingOptions = RotationAveragingOptions(), *,
                      device: str = "cpu") -> tuple[torch.Tensor, RotationAveragingReport]:
    """[n, 3, 3] world-to-camera rotations (image 0's stays at the identity up to the gauge prior) of
    a connected view graph; ``weights`` [E] rank the spanning-tree edges (inlier counts)."""
    rotations = spanning_tree_rotations(n, pairs, R, weights).to(device)
    pairs, R = pairs.to(device), R.to(device)
    sigma, eps = math.radians(options.sigma_deg), math.radians(options.l1_eps_deg)
    tol = math.radians(options.step_tolerance_deg)
    iterations = 0
    for it in range(options.l1_iterations + options.irls_iterations):
        r = residuals(rotations, pairs, R)
        if it < options.l1_iterations:  # the L1 solution of this linearization, by inner reweighting
            step = torch.zeros(n, 3, dtype=r.dtype, device=r.device)
            for _ in range(L1_INNER):
                left = (r - (step[pairs[:, 1]] - step[pairs[:, 0]])).norm(dim=1)
                w = 1 / left.clamp(min=eps)
                step = laplacian_step(n, pairs, r, w / w.max())
        else:
            norm = r.norm(dim=1)
            w = sigma**2 / (sigma**2 + norm**2) ** 2
            step = laplacian_step(n, pairs, r, w / w.max())
        rotations = rotations @ angle_axis_to_matrix(step)
        iterations += 1
        if it >= options.l1_iterations and float(step.norm(dim=1).max()) < tol:
            break
    final = residuals(rotations, pairs, R).norm(dim=1)
    return rotations.cpu(), RotationAveragingReport(iterations, float(np.degrees(final.median().item())))
