"""Schur-complement products of bundle adjustment on the CPU (numba, parallel, float64).

The Jacobian is stored as per-observation blocks: ``Jc`` [M, R, C] (camera-side columns
``cols`` [M, C]) and ``Jx`` [M, R, 3] (point ``obs_point``). Observations are visited through
CSR orders (``ptr``/``order``: the observations of each point, or of each camera block), so every
thread owns its output rows and no atomics are needed. ``sparsa.sfm.schur.SchurSystem`` holds the
pure-torch reference of each function (gathers, batched products and ``index_add_``).
"""

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def reduced_residual(Jc, Jx, cols, x, V_inv, point_ptr, point_obs, out):
    """out[o] = Jc_o x[cols_o] - Jx_o V_p⁻¹ Σ_{o' of p} Jx_o'ᵀ Jc_o' x[cols_o'] for every observation o
    of point p: the per-observation residual of S x before the camera-side scatter. out: [M, R]."""
    R, C = Jc.shape[1], Jc.shape[2]
    for p in numba.prange(point_ptr.shape[0] - 1):
        y = np.zeros(3)
        for q in range(point_ptr[p], point_ptr[p + 1]):
            o = point_obs[q]
            for r in range(R):
                s = 0.0
                for j in range(C):
                    s += Jc[o, r, j] * x[cols[o, j]]
                out[o, r] = s
                for k in range(3):
                    y[k] += Jx[o, r, k] * s
        z = np.empty(3)
        for k in range(3):
            z[k] = V_inv[p, k, 0] * y[0] + V_inv[p, k, 1] * y[1] + V_inv[p, k, 2] * y[2]
        for q in range(point_ptr[p], point_ptr[p + 1]):
            o = point_obs[q]
            for r in range(R):
                out[o, r] -= Jx[o, r, 0] * z[0] + Jx[o, r, 1] * z[1] + Jx[o, r, 2] * z[2]


@numba.njit(parallel=True, cache=True)
def scatter_block(J_sorted, a, block_ptr, block_obs, offset, out):
    """out[offset + b*size + j] += Σ_{o of block b} Σ_r J[o, r, j] a[o, r] for every block b, where
    ``J_sorted[q] = J[block_obs[q]]`` [M, R, size] is the block's Jacobian columns already in block
    order (read sequentially; only ``a`` is gathered)."""
    R, size = J_sorted.shape[1], J_sorted.shape[2]
    for b in numba.prange(block_ptr.shape[0] - 1):
        base = offset + b * size
        for q in range(block_ptr[b], block_ptr[b + 1]):
            o = block_obs[q]
            for j in range(size):
                s = 0.0
                for r in range(R):
                    s += J_sorted[q, r, j] * a[o, r]
                out[base + j] += s


@numba.njit(parallel=True, cache=True)
def jacobi_block(Jc, Jx, V_inv, obs_point, block_ptr, block_obs, column, size, out):
    """out[b] += Σ_{o of block b} (J_oᵀ J_o - W_o V_p⁻¹ W_oᵀ) with J_o = Jc[o, :, column:column+size]
    and W_o = J_oᵀ Jx_o [size, 3]. out: [blocks, size, size]."""
    R = Jc.shape[1]
    for b in numba.prange(block_ptr.shape[0] - 1):
        W = np.empty((size, 3))
        VW = np.empty((size, 3))
        for q in range(block_ptr[b], block_ptr[b + 1]):
            o = block_obs[q]
            for i in range(size):
                for k in range(3):
                    s = 0.0
                    for r in range(R):
                        s += Jc[o, r, column + i] * Jx[o, r, k]
                    W[i, k] = s
            p = obs_point[o]
            for i in range(size):  # VW = W V⁻¹ (V⁻¹ symmetric)
                for k in range(3):
                    VW[i, k] = W[i, 0] * V_inv[p, 0, k] + W[i, 1] * V_inv[p, 1, k] + W[i, 2] * V_inv[p, 2, k]
            for i in range(size):
                for j in range(size):
                    s = 0.0
                    for r in range(R):
                        s += Jc[o, r, column + i] * Jc[o, r, column + j]
                    out[b, i, j] += s - (VW[i, 0] * W[j, 0] + VW[i, 1] * W[j, 1] + VW[i, 2] * W[j, 2])


@numba.njit(parallel=True, cache=True)
def dense_rows(Jc, Jx, cols, V_inv, obs_point, point_ptr, point_obs, block_ptr, block_obs, column, size, offset,
               S):
    """The rows of one kind of camera block of the reduced camera system, S -= or += in place:
    for each observation o of block b (rows ``offset + b*size + i``) and each observation o' of
    the same point p, ``S[row, cols[o']] += J_oᵀ Jc_o [o' = o] - W_o V_p⁻¹ W_o'ᵀ`` with
    ``J_o = Jc[o, :, column:column+size]``, ``W_o = J_oᵀ Jx_o``. Each thread owns its block's rows.
    S: [D, D] (damping not included)."""
    R, C = Jc.shape[1], Jc.shape[2]
    for b in numba.prange(block_ptr.shape[0] - 1):
        A = np.empty((size, 3))
        W = np.empty((size, 3))
        for q in range(block_ptr[b], block_ptr[b + 1]):
            o = block_obs[q]
            p = obs_point[o]
            for i in range(size):
                row = offset + b * size + i
                for j in range(C):
                    s = 0.0
                    for r in range(R):
                        s += Jc[o, r, column + i] * Jc[o, r, j]
                    S[row, cols[o, j]] += s
                for k in range(3):
                    s = 0.0
                    for r in range(R):
                        s += Jc[o, r, column + i] * Jx[o, r, k]
                    W[i, k] = s
            for i in range(size):  # A = W_o V_p⁻¹
                for k in range(3):
                    A[i, k] = W[i, 0] * V_inv[p, 0, k] + W[i, 1] * V_inv[p, 1, k] + W[i, 2] * V_inv[p, 2, k]
            for q2 in range(point_ptr[p], point_ptr[p + 1]):
                o2 = point_obs[q2]
                for j in range(C):
                    w0 = 0.0
                    w1 = 0.0
                    w2 = 0.0
                    for r in range(R):
                        w0 += Jc[o2, r, j] * Jx[o2, r, 0]
                        w1 += Jc[o2, r, j] * Jx[o2, r, 1]
                        w2 += Jc[o2, r, j] * Jx[o2, r, 2]
                    c = cols[o2, j]
                    for i in range(size):
                        S[offset + b * size + i, c] -= A[i, 0] * w0 + A[i, 1] * w1 + A[i, 2] * w2
