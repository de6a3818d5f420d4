"""AnchorAttention on the GPU (Triton): checks the operands, then runs the three kernels.

1. K1 (:mod:`~sparsa.kernels.triton.anchor_dense`): each row's anchor, each tile's mean anchor and mean query;
2. K2 (:mod:`~sparsa.kernels.triton.stripe_index`): the kept stripe keys per group, exact-size CSR
   (tiles of ``SELECT_BLOCK_N`` keys, each scored against the rows of every group it may join);
3. K3 (:mod:`~sparsa.kernels.triton.stripe_attention`): softmax over init + local + gathered stripes.

All follow :class:`~sparsa.kernels.stripe_regions.StripeRegions` and match the PyTorch reference
(:mod:`sparsa.kernels.reference_attention`, :func:`sparsa.attention.anchor.identify_reference`).
Any ``N`` (masked tails), any batch, GQA in the kernels, any strides with a contiguous last dim
(others are copied). On the CPU they run under ``TRITON_INTERPRET=1`` (fp32/fp16: the interpreter
computes bf16 wrongly, so bf16 is refused there).
"""

import os

import torch

from sparsa.errors import SparsaError
from sparsa.kernels.reference_attention import check_qkv
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions
from sparsa.kernels.triton.anchor_dense import anchors_triton
from sparsa.kernels.triton.stripe_attention import stripe_attention_triton
from sparsa.kernels.triton.stripe_index import stripe_index_triton

BLOCK_N = 64  # keys per chunk in K1 and K3
SELECT_BLOCK_N = 128  # keys per K2 program
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
IDENTIFY = ("rows", "pooled")


def _power_of_two(x: int, lo: int, hi: int) -> bool:
    return lo <= x <= hi and x & (x - 1) == 0


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions, identify: str,
           block_n: int) -> None:
    """Raise :class:`SparsaError` (one line naming the argument) for what the kernels cannot take."""
    D = check_qkv(q, k, v)[4]
    if identify not in IDENTIFY:
        raise SparsaError(f"identify={identify!r}: the Triton AnchorAttention kernels take one of {', '.join(IDENTIFY)}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise SparsaError(f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype}: the Triton AnchorAttention kernels "
                          "take one dtype of fp32, fp16, bf16")
    if interpret and q.dtype == torch.bfloat16:
        raise SparsaError("q dtype torch.bfloat16 under TRITON_INTERPRET=1: the interpreter computes bf16 wrongly; "
                          "use fp16/fp32 or a CUDA device")
    if not interpret and not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise SparsaError(f"q, k, v on {q.device}, {k.device}, {v.device}: the Triton AnchorAttention kernels "
                          "need CUDA tensors (or TRITON_INTERPRET=1)")
    if not _power_of_two(D, 16, 256):
        raise SparsaError(f"head dim D={D}: the Triton AnchorAttention kernels take a power of two in 16..256")
    if not _power_of_two(regions.block_m, 16, 128):
        raise SparsaError(f"regions.block_m={regions.block_m}: the Triton AnchorAttention kernels take a power "
                          "of two in 16..128")
    if not _power_of_two(block_n, 16, 128):
        raise SparsaError(f"block_n={block_n}: must be a power of two in 16..128")


def anchor_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions,
                            theta: float, scale: float, identify: str, *, block_n: int = BLOCK_N):
    """Causal AnchorAttention of one prefill (no autograd).

    Args:
        q: [B, Hq, N, D]; k, v: [B, Hkv, N, D] with ``Hq % Hkv == 0``; one dtype of fp32/fp16/bf16,
            on CUDA (or the CPU under ``TRITON_INTERPRET=1``, not bf16); D a power of two in 16..256.
        regions: geometry; ``block_m`` a power of two in 16..128.
        theta: keep a stripe key within ``theta`` of the anchor (natural-log units; +-inf allowed).
        scale: score scale.
        identify: ``rows`` (each row against its own anchor) or ``pooled`` (tile means); see
            :mod:`~sparsa.kernels.triton.stripe_index`.
        block_n: keys per chunk of K1 and K3 (tests may take 16 or 32).
    Returns:
        (O [B, Hq, N, D] in q's dtype, LSE [B, Hq, N] fp32 natural-log units, the kept stripe keys as a
        :class:`StripeIndex` over (B, Hq, groups), anchors [B, Hq, N] fp32 natural-log units).
    """
    _check(q, k, v, regions, identify, block_n)
    B, Hq, N, _ = q.shape
    if q.numel() == 0:
        empty = torch.zeros(B * Hq * regions.n_groups(N) + 1, dtype=torch.int64, device=q.device)
        index = StripeIndex(empty, torch.zeros(0, dtype=torch.int32, device=q.device), B, Hq, regions.n_groups(N))
        return (torch.empty_like(q), torch.empty(B, Hq, N, dtype=torch.float32, device=q.device), index,
                torch.empty(B, Hq, N, dtype=torch.float32, device=q.device))
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    anchors, pooled_anchors, pooled_queries = anchors_triton(q, k, regions, scale, block_n)
    index = stripe_index_triton(q, k, anchors, pooled_anchors, pooled_queries, regions, theta, scale, identify,
                                SELECT_BLOCK_N)
    o, lse = stripe_attention_triton(q, k, v, regions, index, scale, block_n)
    return o, lse, index, anchors
