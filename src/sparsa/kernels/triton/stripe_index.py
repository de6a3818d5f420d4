"""K2 of AnchorAttention on the GPU (Triton): stripe identification and compaction into a CSR.

Per (batch, query head, group ``g``), key ``j`` of the stripe range ``[init, L_g)``
(``L_g = max(g*G - window, 0)``) is kept iff its score is at least ``-theta`` (natural-log
units; theta may be +-inf). Two scores (``AnchorConfig.identify``):

* ``rows``: ``max_i q_i . k_j * scale - a_i`` over the group's rows (``a_i``: K1's row anchors).
  Each chunk of ``BLOCK_N`` keys is scored against every ``[BLOCK_M, D]`` row tile of the group,
  in the input dtype with fp32 sums (IEEE fp32 for fp32 inputs), absent rows at ``a = +inf``.
* ``pooled``: ``max_t q̄_t . k_j * scale - ā_t`` over the group's ``step`` tiles, ``q̄_t`` the
  fp32 mean of the tile's valid rows, ``ā_t`` K1's tile mean anchor. The pooled queries form a
  ``[BLOCK_T, D]`` fp32 matrix (``BLOCK_T`` = ``step`` rounded up to a power of two >= 16,
  ``tl.dot``'s smallest side; absent rows score ``-inf`` through ``ā = +inf``), scored with one
  fp32 IEEE product per chunk.

Both match the fp32 reference (:data:`sparsa.attention.anchor.SCORES`) up to summation order.
One program per group and (batch, query head), grid ``(n_groups, B*Hq)``. Two launches build an
exact-size CSR:

1. count: ``counts[r]`` kept keys of row ``r = (b*Hq + h)*n_groups + g``;
2. host: ``indptr[1:] = cumsum(counts)``;
3. fill: the same scan writes each kept key at ``indptr[r] + running offset + rank in its
   chunk`` (``tl.cumsum`` of the keep flags), chunks in increasing order, so every row comes
   out strictly increasing with no sort and no ``N``-slot scratch per group.

Inputs: q [B, Hq, N, D], k [B, Hkv, N, D] (last dim contiguous), row anchors [B, Hq, N] fp32,
pooled anchors [B, Hq, T] fp32. Output: :class:`StripeIndex` (indptr [B*Hq*n_groups + 1] int64,
indices [nnz] int32).
"""

import torch
import triton
import triton.language as tl

from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions
from sparsa.kernels.triton.steps import dot_rows, load_tokens


@triton.jit
def _pooled_queries(q_ptr, pooled_ptr, group, n_ctx, step, stride_qn, BLOCK_T: tl.constexpr,
                    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The group's pooled queries [BLOCK_T, HEAD_DIM] fp32 (0 past its last tile) and pooled
    anchors [BLOCK_T] fp32 (+inf past its last tile, so those rows never keep a key)."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    tile0 = group * step
    tiles = tl.minimum(step, tl.cdiv(n_ctx, BLOCK_M) - tile0)  # tiles starting before N
    q_bar = tl.zeros((BLOCK_T, HEAD_DIM), dtype=tl.float32)
    for t in range(0, tiles):
        offs_m = (tile0 + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < n_ctx
        q = load_tokens(q_ptr, offs_m, offs_d, row_ok, offs_d < HEAD_DIM, stride_qn).to(tl.float32)
        mean = tl.sum(q, axis=0) / tl.sum(row_ok.to(tl.float32), axis=0)
        q_bar = tl.where(offs_t[:, None] == t, mean[None, :], q_bar)
    a_bar = tl.load(pooled_ptr + tile0 + offs_t, mask=offs_t < tiles, other=float("inf"))
    return q_bar, a_bar


@triton.jit
def _row_max(q_ptr, anchors_ptr, k, group, n_ctx, step, scale, stride_qn, IEEE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """``max_i q_i . k_j * scale - a_i`` over the group's valid rows, [BLOCK_N] fp32 (k [BLOCK_N, HEAD_DIM])."""
    offs_d = tl.arange(0, HEAD_DIM)
    tile0 = group * step
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for t in range(0, tl.minimum(step, tl.cdiv(n_ctx, BLOCK_M) - tile0)):
        offs_m = (tile0 + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < n_ctx
        q = load_tokens(q_ptr, offs_m, offs_d, row_ok, offs_d < HEAD_DIM, stride_qn)
        a = tl.load(anchors_ptr + offs_m, mask=row_ok, other=float("inf"))
        s = dot_rows(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), q, k, IEEE) * scale - a[:, None]
        best = tl.maximum(best, tl.max(s, axis=0))
    return best


@triton.jit
def _stripe_index_kernel(q_ptr, k_ptr, anchors_ptr, pooled_ptr, counts_ptr, indptr_ptr, indices_ptr, n_ctx, heads,
                         kv_group, step, init, window, scale, neg_theta, stride_qb, stride_qh, stride_qn, stride_kb,
                         stride_kh, stride_kn, ROWS: tl.constexpr, FILL: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr):
    group, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    q_ptr += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_ptr += b.to(tl.int64) * stride_kb + (h // kv_group).to(tl.int64) * stride_kh
    anchors_ptr += bh.to(tl.int64) * n_ctx
    pooled_ptr += bh.to(tl.int64) * tl.cdiv(n_ctx, BLOCK_M)
    if not ROWS:
        q_bar, a_bar = _pooled_queries(q_ptr, pooled_ptr, group, n_ctx, step, stride_qn, BLOCK_T, BLOCK_M, HEAD_DIM)
    offs_d = tl.arange(0, HEAD_DIM)
    row = bh.to(tl.int64) * tl.num_programs(0) + group
    key_end = tl.maximum(group * step * BLOCK_M - window, 0)  # L_g = max(g*G - window, 0)
    if FILL:
        offset = tl.load(indptr_ptr + row)
    else:
        offset = tl.zeros((), dtype=tl.int64)
    for start in range(tl.minimum(init, key_end), key_end, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < key_end
        k = load_tokens(k_ptr, offs_n, offs_d, key_ok, offs_d < HEAD_DIM, stride_kn)
        if ROWS:
            best = _row_max(q_ptr, anchors_ptr, k, group, n_ctx, step, scale, stride_qn, IEEE, BLOCK_M, BLOCK_N,
                            HEAD_DIM)
        else:
            s = dot_rows(tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32), q_bar, k.to(tl.float32), True) * scale
            best = tl.max(s - a_bar[:, None], axis=0)
        keep = (best >= neg_theta) & key_ok
        flags = keep.to(tl.int32)
        if FILL:
            tl.store(indices_ptr + offset + tl.cumsum(flags, axis=0) - 1, offs_n, mask=keep)
        offset += tl.sum(flags, axis=0)
    if not FILL:
        tl.store(counts_ptr + row, offset)


def stripe_index_triton(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, pooled: torch.Tensor,
                        regions: StripeRegions, theta: float, scale: float, identify: str, block_n: int) -> StripeIndex:
    """Launch K2 (count, prefix sum, fill) on checked operands and K1's row and pooled anchors, with the
    ``identify`` rule (``rows`` or ``pooled``); reading nnz to size ``indices`` is the one device-to-host sync."""
    B, Hq, N, D = q.shape
    groups = regions.n_groups(N)
    counts = torch.zeros(B * Hq * groups, dtype=torch.int64, device=q.device)
    indptr = torch.zeros(B * Hq * groups + 1, dtype=torch.int64, device=q.device)

    def launch(indices: torch.Tensor, fill: bool):
        _stripe_index_kernel[(groups, B * Hq)](
            q, k, anchors, pooled, counts, indptr, indices, N, Hq, Hq // k.shape[1], regions.step, regions.init,
            regions.window, scale, -theta, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), ROWS=identify == "rows", FILL=fill, IEEE=q.dtype == torch.float32, BLOCK_T=max(16, triton.next_power_of_2(regions.step)), BLOCK_M=regions.block_m, BLOCK_N=block_n,
            HEAD_DIM=D)

    launch(counts, False)  # the count pass writes no indices
    indptr[1:] = counts.cumsum(0)
    indices = torch.empty(int(indptr[-1]), dtype=torch.int32, device=q.device)
    if indices.numel():
        launch(indices, True)
    return StripeIndex(indptr, indices, B, Hq, groups)
