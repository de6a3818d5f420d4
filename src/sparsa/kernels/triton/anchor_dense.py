"""K1 of AnchorAttention on the GPU (Triton): the anchor of every query row, each tile's mean anchor and mean query.

The anchor of query row ``i`` of group ``g = i // G`` (:class:`StripeRegions`) is its largest
scaled score over its dense region, a cheap near-maximum of the whole causal row:

    a_i = max_j q_i . k_j * scale     over  j <= i  and  (j < init  or  j >= L_g)

One program per tile of ``BLOCK_M`` query rows and (batch, query head), grid ``(n_tiles, B*Hq)``.
It holds the tile's queries and scans the keys of KV head ``h // (Hq // Hkv)`` (GQA without
repeating K) in chunks of ``BLOCK_N``: the init range ``[0, min(init, L_g))``, then the local
range ``[L_g, last row of the tile]`` (``L_g = max(g*G - window, 0)``) under the causal mask ``j <= i``. Scores only: no softmax
and no ``P @ V`` (the attention kernel recomputes the dense region). Every valid row has at
least the key ``j = i``, so its anchor is finite.

Shapes and units:
    q [B, Hq, N, D], k [B, Hkv, N, D] (fp32/fp16/bf16, last dim contiguous, any other strides);
    anchors [B, Hq, N] fp32, natural-log units (``q . k * scale``, as the softmax exponent);
    pooled anchors [B, Hq, T] fp32 with ``T = cdiv(N, BLOCK_M)``: each tile's mean anchor over its
    valid rows, and pooled queries [B, Hq, T, D] fp32: each tile's mean query over its valid rows
    (``ā_t`` and ``q̄_t`` of the ``pooled`` identification, :mod:`sparsa.kernels.triton.stripe_index`).
"""

import torch
import triton
import triton.language as tl

from sparsa.kernels.stripe_regions import StripeRegions
from sparsa.kernels.triton.steps import dot_rows, load_tokens


@triton.jit
def _range_max(m_i, q, k_ptr, offs_m, lo, hi, scale, stride_kn, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """``max(m_i, max_j q . k_j * scale)`` over keys ``lo <= j < hi`` with ``j <= row`` ([BLOCK_M] fp32)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < hi
        k = load_tokens(k_ptr, offs_n, offs_d, key_ok, offs_d < HEAD_DIM, stride_kn)
        s = dot_rows(tl.zeros((offs_m.shape[0], BLOCK_N), dtype=tl.float32), q, k, IEEE) * scale
        s = tl.where(key_ok[None, :] & (offs_n[None, :] <= offs_m[:, None]), s, float("-inf"))
        m_i = tl.maximum(m_i, tl.max(s, axis=1))
    return m_i


@triton.jit
def _anchor_kernel(q_ptr, k_ptr, anchors_ptr, pooled_ptr, pooled_q_ptr, n_ctx, heads, kv_group, step, init, window, scale,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    q_ptr += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_ptr += b.to(tl.int64) * stride_kb + (h // kv_group).to(tl.int64) * stride_kh
    row0 = tile * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < n_ctx
    q = load_tokens(q_ptr, offs_m, offs_d, row_ok, offs_d < HEAD_DIM, stride_qn)
    local_start = tl.maximum(tile // step * step * BLOCK_M - window, 0)  # L_g = max(g*G - window, 0)
    row_end = tl.minimum(row0 + BLOCK_M, n_ctx)  # one past the tile's last valid row
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    m_i = _range_max(m_i, q, k_ptr, offs_m, 0, tl.minimum(init, local_start), scale, stride_kn, IEEE, BLOCK_N,
                     HEAD_DIM)
    m_i = _range_max(m_i, q, k_ptr, offs_m, local_start, row_end, scale, stride_kn, IEEE, BLOCK_N, HEAD_DIM)
    tl.store(anchors_ptr + bh.to(tl.int64) * n_ctx + offs_m, m_i, mask=row_ok)
    valid = (row_end - row0).to(tl.float32)
    pooled_row = bh.to(tl.int64) * tl.num_programs(0) + tile
    tl.store(pooled_ptr + pooled_row, tl.sum(tl.where(row_ok, m_i, 0.0), axis=0) / valid)
    tl.store(pooled_q_ptr + pooled_row * HEAD_DIM + offs_d, tl.sum(q.to(tl.float32), axis=0) / valid)


def anchors_triton(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float,
                   block_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch K1 on checked operands (:func:`sparsa.kernels.triton.anchor.anchor_attention_triton`).

    Returns:
        (anchors [B, Hq, N] fp32 and pooled anchors [B, Hq, T] fp32, natural-log units; pooled
        queries [B, Hq, T, D] fp32).
    """
    B, Hq, N, D = q.shape
    tiles = regions.n_tiles(N)
    anchors = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    pooled = torch.empty(B, Hq, tiles, dtype=torch.float32, device=q.device)
    pooled_q = torch.empty(B, Hq, tiles, D, dtype=torch.float32, device=q.device)
    _anchor_kernel[(tiles, B * Hq)](q, k, anchors, pooled, pooled_q, N, Hq, Hq // k.shape[1], regions.step,
                                    regions.init, regions.window, scale, q.stride(0), q.stride(1), q.stride(2),
                                    k.stride(0), k.stride(1), k.stride(2), IEEE=q.dtype == torch.float32,
                                    BLOCK_M=regions.block_m, BLOCK_N=block_n, HEAD_DIM=D)
    return anchors, pooled, pooled_q
