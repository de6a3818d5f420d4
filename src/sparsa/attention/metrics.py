"""How good a sparse attention is, on real queries and keys.

* ``recall``: share of the true (dense causal) softmax mass on the computed (query, key) pairs,
  averaged over query rows and heads;
* ``density``: computed pairs over all causal pairs, initial tokens and local windows included;
* ``rel_err``: ``||O - O_dense|| / ||O_dense||`` (Frobenius, over the whole layer);
* ``close_share``: share of output elements within 1e-2 of dense (the metric the released
  AnchorAttention code calls recall);
* ``oracle_recall``: the best any mask of the same density can reach, keeping each row's
  largest probabilities (``round(density * (i + 1))`` keys for row ``i``).
"""

import math
from dataclasses import asdict, dataclass

import torch

from sparsa.kernels.reference_attention import check_qkv, kv_heads
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions


@dataclass
class AttentionMetrics:
    recall: float
    density: float
    rel_err: float
    close_share: float
    kept_pairs: int
    causal_pairs: int
    err_sq: float  # ||O - O_dense||^2, to pool layers
    ref_sq: float  # ||O_dense||^2

    def to_dict(self) -> dict:
        """The reported fields (the oracle has no output, so no rel_err or close_share)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("err_sq", "ref_sq") and not (isinstance(v, float) and math.isnan(v))}


def measure(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions,
            indices: dict[str, StripeIndex | None], *, scale: float | None = None,
            oracle: bool = True) -> dict[str, AttentionMetrics]:
    """Metrics of several stripe selections of one layer, from one pass over the dense scores.

    Args:
        q, k, v: [B, Hq, N, D] and [B, Hkv, N, D] (see :mod:`sparsa.kernels.reference_attention`).
        indices: name -> kept stripe keys (None: no stripes, init + local only).
        oracle: also report ``oracle`` at the density of the first entry of ``indices``.
    Returns:
        name -> metrics (plus ``oracle`` with recall only meaningful; its rel_err is nan).
    """
    B, Hq, _, N, D = check_qkv(q, k, v)
    scale = 1 / math.sqrt(D) if scale is None else scale
    kx, vx = kv_heads(k, Hq).float(), kv_heads(v, Hq).float()
    masks = {name: None if idx is None else idx.to_mask(N) for name, idx in indices.items()}
    dense = regions.dense_mask(N, q.device)
    sums = {name: torch.zeros(4, dtype=torch.float64) for name in indices}  # recall, kept, err², close
    ref_sq, oracle_sum = 0.0, 0.0
    first = next(iter(indices.values()), None)
    oracle_density = kept_pairs(regions, first, B, Hq, N) / (B * Hq * N * (N + 1) // 2)
    for g in range(regions.n_groups(N)):
        r0, r1 = g * regions.group, min((g + 1) * regions.group, N)
        logits = (q[:, :, r0:r1].float() @ kx[:, :, :r1].transpose(-1, -2)) * scale  # [B, Hq, rows, r1]
        causal = dense.new_ones(r1 - r0, r1).tril(r0)
        logits = logits.masked_fill(~causal, -math.inf)
        p = logits.softmax(dim=-1)
        o_ref = p @ vx[:, :, :r1]
        ref_sq += float(o_ref.double().pow(2).sum())
        for name, mask in masks.items():
            keep = dense[r0:r1, :r1].expand(B, Hq, -1, -1)
            if mask is not None:
                keep = keep | mask[:, :, g, None, :r1]
            o = logits.masked_fill(~keep, -math.inf).softmax(dim=-1) @ vx[:, :, :r1]
            sums[name] += torch.tensor([float((p * keep).sum()), float(keep.sum()),
                                        float((o - o_ref).double().pow(2).sum()),
                                        float(((o - o_ref).abs() < 1e-2).sum())], dtype=torch.float64)
        if oracle:
            oracle_sum += oracle_mass(p, r0, oracle_density)
    rows, causal_pairs = B * Hq * N, B * Hq * N * (N + 1) // 2
    out = {name: AttentionMetrics(recall=float(s[0]) / rows, density=float(s[1]) / causal_pairs,
                                  rel_err=math.sqrt(float(s[2]) / ref_sq) if ref_sq else 0.0,
                                  close_share=float(s[3]) / (rows * D), kept_pairs=int(s[1]),
                                  causal_pairs=causal_pairs, err_sq=float(s[2]), ref_sq=ref_sq)
           for name, s in sums.items()}
    if oracle and out:
        out["oracle"] = AttentionMetrics(recall=oracle_sum / rows, density=oracle_density, rel_err=math.nan,
                                         close_share=math.nan, kept_pairs=round(oracle_density * causal_pairs),
                                         causal_pairs=causal_pairs,
                                         err_sq=math.nan, ref_sq=ref_sq)
    return out


def kept_pairs(regions: StripeRegions, index: StripeIndex | None, batch: int, heads: int, n: int) -> int:
    """(query, key) pairs computed: the dense region of every row plus each stripe key times its group's rows."""
    return regions.dense_pairs(n) * batch * heads + (0 if index is None else regions.stripe_pairs(index, n))


def oracle_mass(p: torch.Tensor, r0: int, density: float) -> float:
    """Sum over rows of each row's ``round(density * (i + 1))`` largest probabilities.

    Args:
        p: [B, Hq, rows, keys] probabilities of query rows ``r0 ..``.
    """
    top = p.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    i = torch.arange(r0, r0 + p.shape[2], device=p.device)
    kept = torch.round(density * (i + 1)).long().clamp(1, p.shape[-1])  # [rows]
    return float(top.gather(-1, (kept - 1)[None, None, :, None].expand(*p.shape[:2], -1, 1)).sum())
