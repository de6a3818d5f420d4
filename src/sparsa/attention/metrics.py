"""How good a sparse attention is, on real queries and keys.

* ``recall``: share of the true (dense causal) softmax mass on the computed (query, key) pairs,
  averaged over query rows and heads;
* ``density``: computed pairs over all causal pairs, initial tokens and local windows included;
* ``rel_err``: ``||O - O_dense|| / ||O_dense||`` (Frobenius, over the whole layer);
* ``close_share``: share of output elements within 1e-2 of dense (the metric the released
  AnchorAttention code calls recall);
* ``gap_to_optimum``: the optimum's recall at the selector's own pair count in every head, minus
  the selector's recall (>= 0 up to float rounding).

Two recall bounds with no output (:data:`BOUNDS`), at the pair count of the first selection:

* ``per_row_topk``: every row ``i`` keeps its ``round(density * (i + 1))`` largest
  probabilities. Not the best mask of that density: rows differ in how concentrated they are.
* ``optimum``: every head keeps its largest probabilities over all its causal pairs, as many as
  the first selection computes in that head (its dense region plus its stripes); the best recall
  any mask with those per-head counts reaches (:mod:`sparsa.attention.optimum`).
"""

import math
from dataclasses import asdict, dataclass

import torch

from sparsa.attention.optimum import TopMass
from sparsa.kernels.reference_attention import check_qkv, kv_heads
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions

BOUNDS = ("per_row_topk", "optimum")  # recall bounds: no output, so no rel_err or close_share


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
    gap_to_optimum: float = math.nan  # optimum recall at this selection's per-head pair counts - recall

    def to_dict(self) -> dict:
        """The reported fields (nan ones left out: the bounds have no rel_err or close_share)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("err_sq", "ref_sq") and not (isinstance(v, float) and math.isnan(v))}


def group_probs(q: torch.Tensor, kx: torch.Tensor, regions: StripeRegions, scale: float):
    """Yield ``(r0, r1, logits, p)`` for each row group: dense causal logits and softmax of rows
    ``r0 .. r1-1`` against keys ``0 .. r1-1``, [B, Hq, rows, r1] fp32 (``-inf`` and 0 past the
    diagonal). Deterministic, so a second pass sees the same bits.

    Args:
        q: [B, Hq, N, D]; kx: [B, Hq, N, D] fp32 keys repeated to the query heads.
    """
    N = q.shape[2]
    for g in range(regions.n_groups(N)):
        r0, r1 = g * regions.group, min((g + 1) * regions.group, N)
        logits = (q[:, :, r0:r1].float() @ kx[:, :, :r1].transpose(-1, -2)) * scale  # [B, Hq, rows, r1]
        causal = torch.ones(r1 - r0, r1, dtype=torch.bool, device=q.device).tril(r0)
        logits = logits.masked_fill(~causal, -math.inf)
        yield r0, r1, logits, logits.softmax(dim=-1)


def measure(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: StripeRegions,
            indices: dict[str, StripeIndex | None], *, scale: float | None = None,
            bounds: bool = True) -> dict[str, AttentionMetrics]:
    """Metrics of several stripe selections of one layer, from one pass over the dense scores
    (and a second one for the optimum).

    Args:
        q, k, v: [B, Hq, N, D] and [B, Hkv, N, D] (see :mod:`sparsa.kernels.reference_attention`).
        indices: name -> kept stripe keys (None: no stripes, init + local only).
        bounds: also report ``per_row_topk`` and ``optimum`` at the pair counts of the first
            entry of ``indices``, and every entry's ``gap_to_optimum``.
    Returns:
        name -> metrics (the bounds with recall, density and pairs only; rel_err nan).
    """
    B, Hq, _, N, D = check_qkv(q, k, v)
    scale = 1 / math.sqrt(D) if scale is None else scale
    kx, vx = kv_heads(k, Hq).float(), kv_heads(v, Hq).float()
    masks = {name: None if idx is None else idx.to_mask(N) for name, idx in indices.items()}
    dense = regions.dense_mask(N, q.device)
    sums = {name: torch.zeros(4, dtype=torch.float64) for name in indices}  # recall, kept, err², close
    rows, causal_pairs = B * Hq * N, B * Hq * N * (N + 1) // 2
    first = next(iter(indices.values()), None)
    topk_counts = row_topk_counts(N, kept_pairs(regions, first, B, Hq, N) / causal_pairs, q.device)
    top, ref_sq, topk_sum = TopMass(B * Hq, q.device) if bounds else None, 0.0, 0.0
    for r0, r1, logits, p in group_probs(q, kx, regions, scale):
        o_ref = p @ vx[:, :, :r1]
        ref_sq += float(o_ref.double().pow(2).sum())
        for name, mask in masks.items():
            keep = dense[r0:r1, :r1].expand(B, Hq, -1, -1)
            if mask is not None:
                keep = keep | mask[:, :, r0 // regions.group, None, :r1]
            o = logits.masked_fill(~keep, -math.inf).softmax(dim=-1) @ vx[:, :, :r1]
            sums[name] += torch.tensor([float((p * keep).sum()), float(keep.sum()),
                                        float((o - o_ref).double().pow(2).sum()),
                                        float(((o - o_ref).abs() < 1e-2).sum())], dtype=torch.float64)
        if bounds:
            topk_sum += row_topk_mass(p, topk_counts[r0:r1])
            top.add_coarse(p.flatten(0, 1))
    out = {name: AttentionMetrics(recall=float(s[0]) / rows, density=float(s[1]) / causal_pairs,
                                  rel_err=math.sqrt(float(s[2]) / ref_sq) if ref_sq else 0.0,
                                  close_share=float(s[3]) / (rows * D), kept_pairs=int(s[1]),
                                  causal_pairs=causal_pairs, err_sq=float(s[2]), ref_sq=ref_sq)
           for name, s in sums.items()}
    if bounds and out:
        topk_pairs = int(topk_counts.sum()) * B * Hq
        out["per_row_topk"] = AttentionMetrics(recall=topk_sum / rows, density=topk_pairs / causal_pairs,
                                               rel_err=math.nan, close_share=math.nan, kept_pairs=topk_pairs,
                                               causal_pairs=causal_pairs, err_sq=math.nan, ref_sq=ref_sq)
        budgets = [head_pairs(regions, idx, B, Hq, N) for idx in indices.values()]
        budgets.append(torch.full((B * Hq,), int(topk_counts.sum()), dtype=torch.int64))
        add_optimum(out, top, torch.stack(budgets), lambda: group_probs(q, kx, regions, scale), rows)
    return out


def add_optimum(out: dict[str, AttentionMetrics], top: TopMass, budgets: torch.Tensor, groups, rows: int) -> None:
    """Second pass: set every entry's ``gap_to_optimum`` and add ``optimum`` at the first entry's counts.

    Args:
        out: the selections' metrics, in the order of ``budgets``' rows, ``per_row_topk`` last.
        top: pass 1 done over every group.
        budgets: [len(out), B * Hq] int64 pairs per head of each entry.
        groups: returns a fresh :func:`group_probs` iterator.
        rows: B * Hq * N.
    """
    top.plan(budgets)
    for _, _, _, p in groups():
        top.add_fine(p.flatten(0, 1))
    recall = (top.masses().sum(dim=1) / rows).tolist()  # [len(out)] optimum recall at each entry's counts
    for m, best in zip(out.values(), recall):
        m.gap_to_optimum = best - m.recall
    first = next(iter(out.values()))
    out["optimum"] = AttentionMetrics(recall=recall[0], density=first.density, rel_err=math.nan,
                                      close_share=math.nan, kept_pairs=first.kept_pairs,
                                      causal_pairs=first.causal_pairs, err_sq=math.nan, ref_sq=first.ref_sq)


def kept_pairs(regions: StripeRegions, index: StripeIndex | None, batch: int, heads: int, n: int) -> int:
    """(query, key) pairs computed: the dense region of every row plus each stripe key times its group's rows."""
    return regions.dense_pairs(n) * batch * heads + (0 if index is None else regions.stripe_pairs(index, n))


def head_pairs(regions: StripeRegions, index: StripeIndex | None, batch: int, heads: int, n: int) -> torch.Tensor:
    """[batch * heads] int64 (query, key) pairs each head computes (dense region plus its stripes)."""
    pairs = torch.full((batch * heads,), regions.dense_pairs(n), dtype=torch.int64)
    if index is not None:
        rows = torch.full((index.groups,), regions.group, dtype=torch.int64)
        rows[-1] = n - (index.groups - 1) * regions.group
        pairs += (index.counts().cpu() * rows).sum(dim=-1).flatten()
    return pairs


def row_topk_counts(n: int, density: float, device=None) -> torch.Tensor:
    """[n] int64: row ``i`` keeps ``round(density * (i + 1))`` keys, at least 1, at most ``i + 1``."""
    i = torch.arange(n, device=device)
    return torch.round(density * (i + 1)).long().clamp(min=1).minimum(i + 1)


def row_topk_mass(p: torch.Tensor, counts: torch.Tensor) -> float:
    """Sum over rows of each row's ``counts[row]`` largest probabilities.

    Args:
        p: [B, Hq, rows, keys] probabilities; counts: [rows] int64, 1 .. keys.
    """
    top = p.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    return float(top.gather(-1, (counts - 1)[None, None, :, None].expand(*p.shape[:2], -1, 1)).sum())
