"""K3 of AnchorAttention on the GPU (Triton): causal softmax attention over each row's dense
region plus its group's gathered stripe keys.

One program per tile of ``BLOCK_M`` query rows and (batch, query head), grid ``(n_tiles, B*Hq)``,
in the FlashAttention-2 form: running row maximum ``m_i``, row sum ``l_i`` and output
accumulator ``acc`` in fp32 registers, updated chunk by chunk of ``BLOCK_N`` keys of KV head
``h // (Hq // Hkv)`` (GQA without repeating K/V). For the tile's group ``g``:

    (a) init keys     [0, min(init, L_g))          all precede the tile's rows
    (b) local keys    [L_g, tile's last row]       causal mask j <= i; L_g = max(g*G - window, 0)
    (c) stripe keys   indices[indptr[r] : indptr[r+1]], r = (b*Hq + h)*n_groups + g, all < L_g

The three sets are disjoint and cover the row's kept keys once (:mod:`stripe_regions`). Stripe
chunks load their positions (``idx``, masked past the row's end) and gather K/V rows by pointer
arithmetic, ``base + idx * stride_n + d``, each a contiguous row of ``D`` elements; masked
keys load zeros and score ``-inf``. Exponentials are base 2: scores are scaled by
``scale * log2(e)`` in fp32 so ``exp2(s - m) = exp(q.k*scale - m*ln 2)``; the LSE goes back to
natural-log units as ``(m_i + log2(l_i)) * ln 2``. No (N x N) buffer and no fp32 accumulator
in global memory: the dense region is recomputed here rather than stored by K1.

Shapes: q [B, Hq, N, D], k, v [B, Hkv, N, D] (last dim contiguous); O [B, Hq, N, D] in q's
dtype; LSE [B, Hq, N] fp32, natural-log units (logsumexp of the kept scaled scores).
"""

import torch
import triton
import triton.language as tl

from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions
from sparsa.kernels.triton.steps import dot_rows, load_tokens, store_outputs

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): log(x) = log2(x) * LN2 (a constexpr, read in the kernel)


@triton.jit
def _softmax_step(acc, m_i, l_i, q, k, v, ok, qk_scale, IEEE: tl.constexpr):
    """Fold one chunk of keys (k, v [BLOCK_N, D], ``ok`` [BLOCK_M, BLOCK_N]) into the online
    softmax state; scores in log2 units."""
    s = dot_rows(tl.zeros(ok.shape, dtype=tl.float32), q, k, IEEE) * qk_scale
    s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: each row's first chunk holds a key j <= i
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = dot_rows(acc * alpha[:, None], p.to(v.dtype), tl.trans(v), IEEE)
    return acc, m_new, l_i


@triton.jit
def _dense_range(acc, m_i, l_i, q, k_ptr, v_ptr, offs_m, lo, hi, qk_scale, stride_kn, stride_vn,
                 IEEE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Keys ``lo <= j < hi`` with ``j <= row``, contiguous chunks."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < hi
        k = load_tokens(k_ptr, offs_n, offs_d, key_ok, offs_d < HEAD_DIM, stride_kn)
        v = load_tokens(v_ptr, offs_n, offs_d, key_ok, offs_d < HEAD_DIM, stride_vn)
        ok = key_ok[None, :] & (offs_n[None, :] <= offs_m[:, None])
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, ok, qk_scale, IEEE)
    return acc, m_i, l_i


@triton.jit
def _stripe_range(acc, m_i, l_i, q, k_ptr, v_ptr, indices_ptr, start, end, qk_scale, stride_kn, stride_vn,
                  IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Gathered keys ``indices[start:end]`` (all before the group, so no causal mask)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for j0 in range(start, end, BLOCK_N):
        offs_j = j0 + tl.arange(0, BLOCK_N)
        key_ok = offs_j < end
        idx = tl.load(indices_ptr + offs_j, mask=key_ok, other=0)
        k = load_tokens(k_ptr, idx, offs_d, key_ok, offs_d < HEAD_DIM, stride_kn)
        v = load_tokens(v_ptr, idx, offs_d, key_ok, offs_d < HEAD_DIM, stride_vn)
        ok = tl.broadcast_to(key_ok[None, :], (BLOCK_M, BLOCK_N))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, ok, qk_scale, IEEE)
    return acc, m_i, l_i


@triton.jit
def _stripe_attention_kernel(q_ptr, k_ptr, v_ptr, indptr_ptr, indices_ptr, o_ptr, lse_ptr, n_ctx, heads, kv_group,
                             step, init, window, qk_scale, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                             stride_vb, stride_vh, stride_vn, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    q_ptr += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_ptr += b.to(tl.int64) * stride_kb + (h // kv_group).to(tl.int64) * stride_kh
    v_ptr += b.to(tl.int64) * stride_vb + (h // kv_group).to(tl.int64) * stride_vh
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < n_ctx
    q = load_tokens(q_ptr, offs_m, offs_d, row_ok, offs_d < HEAD_DIM, stride_qn)
    group = tile // step
    local_start = tl.maximum(group * step * BLOCK_M - window, 0)  # L_g = max(g*G - window, 0)
    row = bh.to(tl.int64) * tl.cdiv(n_ctx, step * BLOCK_M) + group  # CSR row of (b, h, g)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    acc, m_i, l_i = _dense_range(acc, m_i, l_i, q, k_ptr, v_ptr, offs_m, 0, tl.minimum(init, local_start), qk_scale,
                                 stride_kn, stride_vn, IEEE, BLOCK_N, HEAD_DIM)
    acc, m_i, l_i = _dense_range(acc, m_i, l_i, q, k_ptr, v_ptr, offs_m, local_start,
                                 tl.minimum(tile * BLOCK_M + BLOCK_M, n_ctx), qk_scale, stride_kn, stride_vn, IEEE,
                                 BLOCK_N, HEAD_DIM)
    acc, m_i, l_i = _stripe_range(acc, m_i, l_i, q, k_ptr, v_ptr, indices_ptr, tl.load(indptr_ptr + row),
                                  tl.load(indptr_ptr + row + 1), qk_scale, stride_kn, stride_vn, IEEE, BLOCK_M,
                                  BLOCK_N, HEAD_DIM)
    out = bh.to(tl.int64) * n_ctx
    store_outputs(o_ptr + out * HEAD_DIM, acc / l_i[:, None], o_ptr, offs_m, offs_d, row_ok, offs_d < HEAD_DIM,
                  HEAD_DIM, False)
    tl.store(lse_ptr + out + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=row_ok)


def stripe_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions,
                            index: StripeIndex, scale: float, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch K3 on checked operands and a stripe index of ``B*Hq*n_groups`` rows.

    Returns:
        (O [B, Hq, N, D] in ``q.dtype``, LSE [B, Hq, N] fp32 natural-log units).
    """
    B, Hq, N, D = q.shape
    o = torch.empty(B, Hq, N, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    _stripe_attention_kernel[(regions.n_tiles(N), B * Hq)](
        q, k, v, index.indptr, index.indices, o, lse, N, Hq, Hq // k.shape[1], regions.step, regions.init,
        regions.window, scale * LOG2E, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0),
        v.stride(1), v.stride(2), IEEE=q.dtype == torch.float32, BLOCK_M=regions.block_m, BLOCK_N=block_n,
        HEAD_DIM=D)
    return o, lse
