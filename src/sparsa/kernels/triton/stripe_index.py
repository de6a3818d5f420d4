"""K2 of AnchorAttention on the GPU (Triton): stripe identification and compaction into a CSR.

Per (batch, query head, group ``g``), key ``j`` of the stripe range ``[init, L_g)``
(``L_g = max(g*G - window, 0)``) is kept iff its score is at least ``-theta`` (natural-log
units; theta may be +-inf). Two scores (``AnchorConfig.identify``):

* ``rows``: ``max_i q_i . k_j * scale - a_i`` over the group's rows (``a_i``: K1's row anchors),
  products in the input dtype with fp32 sums (IEEE fp32 for fp32 inputs), absent rows at ``a = +inf``.
* ``pooled``: ``max_t q̄_t . k_j * scale - ā_t`` over the group's ``step`` tiles (K1's pooled
  queries ``q̄_t`` and tile mean anchors ``ā_t``), fp32 products on the tensor cores as three tf32
  products (``tf32x3``: fp16/bf16 keys are exact in tf32, each fp32 operand is split into a high
  and a low tf32 part, only low x low is dropped, about 2^-21 of a product). A group's pooled queries
  form a ``[BLOCK_T, D]`` matrix (``BLOCK_T`` = ``step`` rounded up to a power of two >= 16,
  ``tl.dot``'s smallest side; absent rows score ``-inf`` through ``ā = +inf``).

Both match the fp32 reference (:data:`sparsa.attention.anchor.SCORES`) up to summation order.

Work: every (group row, stripe key) pair is scored once, ``rows`` about as many multiply-adds as
dense causal attention's ``QKᵀ``. Two launches and a prefix sum build an exact-size CSR:

1. keep (:func:`_keep_kernel`): one program per tile of ``BLOCK_N`` keys and (batch, query head),
   grid ``(cdiv(N, BLOCK_N), B*Hq)``. It loads its key tile once and streams the query tiles of
   every group whose stripe range reaches it (``rows``: the groups' ``[BLOCK_M, D]`` row tiles;
   ``pooled``: one ``[BLOCK_T, D]`` pooled matrix per group) through ``k @ qᵀ`` on the tensor
   cores, a running per-key maximum over rows (``[BLOCK_N]`` fp32) and, at each group's end, the
   keep flags as one bit per key into ``bits`` and the kept count into ``counts`` (atomic add);
2. host: ``indptr[1:] = cumsum(counts)``, and nnz read back (the one device-to-host sync);
3. fill (:func:`_fill_kernel`): one program per group row, grid ``(n_groups, B*Hq)``: it walks
   the row's bits in increasing key order and writes each kept key at ``indptr[r] + running
   offset + rank in its chunk`` (``tl.cumsum`` of the flags), so every row comes out strictly
   increasing with no sort.

Inputs: q [B, Hq, N, D], k [B, Hkv, N, D] (last dim contiguous), row anchors [B, Hq, N] fp32,
tile mean anchors [B, Hq, T] fp32 and pooled queries [B, Hq, T, D] fp32 (``T = cdiv(N, block_m)``,
all from K1). Scratch: bits [B*Hq*n_groups, cdiv(N, BLOCK_N) * BLOCK_N / 8] uint8 (bit ``j % 8`` of
byte ``j // 8``: key ``j`` kept; only the stripe range is written and read). Output:
:class:`StripeIndex` (indptr [B*Hq*n_groups + 1] int64, indices [nnz] int32).
"""

import torch
import triton
import triton.language as tl

from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions
from sparsa.kernels.triton.steps import dot_rows, load_tokens

SMEM_BYTES = 160 * 1024  # shared memory the keep kernel's key tile and in-flight query tiles may take
FILL_TILES = 8  # key tiles per fill step: the fill is latency-bound, so it walks wide chunks


@triton.jit
def _unit_queries(q_ptr, anchors_ptr, tile_q_ptr, tile_a_ptr, unit, n_ctx, n_tiles, step, stride_qn,
                  ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The queries and anchors of scan unit ``unit``: ``rows``, row tile ``unit`` ([BLOCK_M, HEAD_DIM]
    in the input dtype, [BLOCK_M] fp32); ``pooled``, group ``unit``'s pooled queries and tile mean
    anchors ([BLOCK_T, HEAD_DIM] fp32, [BLOCK_T] fp32). Absent rows load 0 with anchor +inf."""
    offs_d = tl.arange(0, HEAD_DIM)
    if ROWS:
        offs = unit * BLOCK_M + tl.arange(0, BLOCK_M)
        ok = offs < n_ctx
        x = load_tokens(q_ptr, offs, offs_d, ok, offs_d < HEAD_DIM, stride_qn)
        a = tl.load(anchors_ptr + offs, mask=ok, other=float("inf"))
    else:
        t = tl.arange(0, BLOCK_T)
        offs = unit * step + t
        ok = (t < step) & (offs < n_tiles)
        x = load_tokens(tile_q_ptr, offs, offs_d, ok, offs_d < HEAD_DIM, HEAD_DIM)
        a = tl.load(tile_a_ptr + offs, mask=ok, other=float("inf"))
    return x, a


@triton.jit
def _keep_kernel(q_ptr, k_ptr, anchors_ptr, tile_q_ptr, tile_a_ptr, counts_ptr, bits_ptr, n_ctx, heads, kv_group,
                 step, init, window, scale, neg_theta, row_bytes, stride_qb, stride_qh, stride_qn, stride_kb,
                 stride_kh, stride_kn, ROWS: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Step 1: the keep bits and kept counts of one tile of ``BLOCK_N`` keys in every group that may
    gather it (grid ``(cdiv(N, BLOCK_N), B*Hq)``)."""
    key_tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    n_tiles = tl.cdiv(n_ctx, BLOCK_M)
    groups = tl.cdiv(n_tiles, step)
    q_ptr += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_ptr += b.to(tl.int64) * stride_kb + (h // kv_group).to(tl.int64) * stride_kh
    anchors_ptr += bh.to(tl.int64) * n_ctx
    tile_a_ptr += bh.to(tl.int64) * n_tiles
    tile_q_ptr += bh.to(tl.int64) * n_tiles * HEAD_DIM
    offs_d = tl.arange(0, HEAD_DIM)
    key0 = key_tile * BLOCK_N
    offs_n = key0 + tl.arange(0, BLOCK_N)
    k = load_tokens(k_ptr, offs_n, offs_d, offs_n < n_ctx, offs_d < HEAD_DIM, stride_kn)
    # the first group whose stripe range reaches the tile: L_g > key0, i.e. g*G - window > key0
    first = tl.where(key0 + BLOCK_N > init, (key0 + window) // (step * BLOCK_M) + 1, groups)
    if ROWS:  # scan units: row tiles, step per group
        per_group, n_units = step, n_tiles
    else:  # scan units: groups, against fp32 keys
        per_group, n_units = 1, groups
        k = k.to(tl.float32)
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for unit in range(first * per_group, n_units):
        x, a = _unit_queries(q_ptr, anchors_ptr, tile_q_ptr, tile_a_ptr, unit, n_ctx, n_tiles, step, stride_qn,
                             ROWS, BLOCK_T, BLOCK_M, HEAD_DIM)
        if ROWS:
            s = dot_rows(tl.zeros((BLOCK_N, x.shape[0]), dtype=tl.float32), k, x, IEEE)
        else:
            s = tl.dot(k, tl.trans(x), input_precision="tf32x3")
        best = tl.maximum(best, tl.max(s * scale - a[None, :], axis=1))
        if ((unit + 1) % per_group == 0) | (unit + 1 == n_units):  # the group's last unit
            group = unit // per_group
            keep = (best >= neg_theta) & (offs_n >= init) & (offs_n < tl.maximum(group * step * BLOCK_M - window, 0))
            row = bh.to(tl.int64) * groups + group
            flags = tl.reshape(keep.to(tl.int32), (BLOCK_N // 8, 8))
            byte = tl.sum(flags << tl.arange(0, 8)[None, :], axis=1)
            tl.store(bits_ptr + row * row_bytes + key_tile * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8),
                     byte.to(tl.uint8))
            kept = tl.sum(keep.to(tl.int32), axis=0)
            tl.atomic_add(counts_ptr + row, kept, mask=kept > 0)
            best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)


@triton.jit
def _fill_kernel(bits_ptr, indptr_ptr, indices_ptr, step, init, window, row_bytes, BLOCK_M: tl.constexpr,
                 CHUNK: tl.constexpr):
    """Step 3: group row ``(bh, group)``'s kept keys in increasing order, written from
    ``indptr[row]`` on (grid ``(n_groups, B*Hq)``, ``CHUNK`` keys per step)."""
    group, bh = tl.program_id(0), tl.program_id(1)
    row = bh.to(tl.int64) * tl.num_programs(0) + group
    bits_ptr += row * row_bytes
    key_end = tl.maximum(group * step * BLOCK_M - window, 0)  # L_g
    offset = tl.load(indptr_ptr + row)
    for start in range(tl.minimum(init, key_end), key_end, CHUNK):
        offs_n = start + tl.arange(0, CHUNK)
        ok = offs_n < key_end
        byte = tl.load(bits_ptr + (offs_n >> 3), mask=ok, other=0).to(tl.int32)
        keep = ok & (((byte >> (offs_n & 7)) & 1) != 0)
        flags = keep.to(tl.int32)
        tl.store(indices_ptr + offset + tl.cumsum(flags, axis=0) - 1, offs_n, mask=keep)
        offset += tl.sum(flags, axis=0)


def _stages(rows: int, block_n: int, head_dim: int, element_size: int) -> int:
    """Query tiles in flight (1..2) beside the key tile within :data:`SMEM_BYTES` (on an H100 at
    32k tokens, bf16, D 128: 2 in flight ran the keep kernel 15% faster than 3)."""
    tile = rows * head_dim * element_size
    return max(1, min(2, (SMEM_BYTES - block_n * head_dim * element_size) // tile))


def stripe_index_triton(q: torch.Tensor, k: torch.Tensor, anchors: torch.Tensor, pooled_anchors: torch.Tensor,
                        pooled_queries: torch.Tensor, regions: StripeRegions, theta: float, scale: float,
                        identify: str, block_n: int) -> StripeIndex:
    """Launch K2 (keep flags and counts, prefix sum, fill) on checked operands and K1's outputs, with
    the ``identify`` rule (``rows`` or ``pooled``); ``block_n`` keys per keep program (a power of two
    >= 16). Reading nnz to size ``indices`` is the one device-to-host sync."""
    B, Hq, N, D = q.shape
    groups = regions.n_groups(N)
    key_tiles = triton.cdiv(N, block_n)
    row_bytes = key_tiles * block_n // 8
    counts = torch.zeros(B * Hq * groups, dtype=torch.int32, device=q.device)
    bits = torch.empty(B * Hq * groups, row_bytes, dtype=torch.uint8, device=q.device)
    rows = identify == "rows"
    block_t = max(16, triton.next_power_of_2(regions.step))
    stages = _stages(regions.block_m, block_n, D, q.element_size()) if rows else _stages(block_t, block_n, D, 4)
    _keep_kernel[(key_tiles, B * Hq)](
        q, k, anchors, pooled_queries, pooled_anchors, counts, bits, N, Hq, Hq // k.shape[1], regions.step,
        regions.init, regions.window, scale, -theta, row_bytes, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
        k.stride(1), k.stride(2), ROWS=rows, IEEE=q.dtype == torch.float32, BLOCK_T=block_t,
        BLOCK_M=regions.block_m, BLOCK_N=block_n, HEAD_DIM=D, num_warps=8, num_stages=stages)
    indptr = torch.zeros(B * Hq * groups + 1, dtype=torch.int64, device=q.device)
    indptr[1:] = counts.cumsum(0)
    indices = torch.empty(int(indptr[-1]), dtype=torch.int32, device=q.device)
    if indices.numel():
        _fill_kernel[(groups, B * Hq)](bits, indptr, indices, regions.step, regions.init, regions.window, row_bytes,
                                       BLOCK_M=regions.block_m, CHUNK=FILL_TILES * block_n)
    return StripeIndex(indptr, indices, B, Hq, groups)
