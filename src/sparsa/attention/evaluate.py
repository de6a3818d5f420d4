"""AnchorAttention on a model's real attention: recall, density and output error per layer,
against the other selectors at the mean density AnchorAttention reached, and each selector's
gap to the optimum mask at its own per-head pair counts.

One forward pass of the dense model over a window of real text captures every layer's Q/K/V
(:mod:`sparsa.attention.capture`); each layer is then scored by :func:`measure`.
"""

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsa.attention import selectors
from sparsa.attention.anchor import identify_reference
from sparsa.attention.capture import LayerQKV, captured_qkv
from sparsa.attention.config import AnchorConfig
from sparsa.attention.metrics import BOUNDS, AttentionMetrics, measure
from sparsa.kernels.reference_attention import anchors_reference, check_qkv

BASELINES = ("vertical_slash", "flex_blocks", "streaming")


@dataclass
class AttentionReport:
    """Per-layer and pooled metrics; ``overall[name]`` pools every layer (recall, close_share and
    gap_to_optimum averaged over rows, density over all causal pairs, rel_err over all output
    elements). The bounds (``per_row_topk``, ``optimum``) have recall, density and pairs only."""

    config: AnchorConfig
    seqlen: int
    layers: list[dict[str, AttentionMetrics]] = field(default_factory=list)
    selection_seconds: float = 0.0

    @property
    def overall(self) -> dict[str, dict]:
        out = {}
        for name in self.layers[0]:
            ms = [layer[name] for layer in self.layers]
            kept, causal = sum(m.kept_pairs for m in ms), sum(m.causal_pairs for m in ms)
            ref = sum(m.ref_sq for m in ms)
            err = sum(m.err_sq for m in ms)
            out[name] = {"recall": sum(m.recall for m in ms) / len(ms),
                         "density": sum(m.density * m.causal_pairs for m in ms) / causal, "kept_pairs": kept}
            if not any(math.isnan(m.gap_to_optimum) for m in ms):
                out[name]["gap_to_optimum"] = sum(m.gap_to_optimum for m in ms) / len(ms)
            if name not in BOUNDS:
                out[name].update(rel_err=math.sqrt(err / ref) if ref else 0.0,
                                 close_share=sum(m.close_share for m in ms) / len(ms))
        return out

    def to_dict(self) -> dict:
        anchor = self.overall["anchor"]
        return {"recall": anchor["recall"], "density": anchor["density"], "rel_err": anchor["rel_err"],
                "theta": self.config.theta, "seqlen": self.seqlen, "config": self.config.to_dict(),
                "selection_seconds": round(self.selection_seconds, 3), "overall": self.overall,
                "layers": [{name: m.to_dict() for name, m in layer.items()} for layer in self.layers]}


@torch.no_grad()
def capture_layers(model: nn.Module, ids: torch.Tensor) -> dict[int, LayerQKV]:
    """Every layer's Q/K/V for token ids [1, N] (one dense forward pass)."""
    with captured_qkv(model) as store:
        model(ids)
    return dict(sorted(store.items()))


def score_layer(qkv: LayerQKV, config: AnchorConfig, report: AttentionReport, baselines: bool):
    """AnchorAttention's selection on one layer (the reference; timed), the baselines at its
    mean density over heads, and the metrics of all of them (outputs from masked dense
    attention), with the bounds when ``baselines``."""
    q, k, v, scale = qkv.q, qkv.k, qkv.v, qkv.scale
    N = check_qkv(q, k, v)[3]
    regions = config.regions
    start = time.perf_counter()
    index = identify_reference(q, k, anchors_reference(q, k, regions, scale), regions, config.theta, scale,
                               config.identify)
    report.selection_seconds += time.perf_counter() - start
    indices = {"anchor": index}
    if baselines:
        pairs = regions.stripe_pairs(index, N)
        indices["vertical_slash"] = selectors.vertical_slash_index(q, k, regions, scale, pairs)
        indices["flex_blocks"] = selectors.flex_blocks_index(q, k, regions, scale, pairs)
        indices["streaming"] = None
    return measure(q, k, v, regions, indices, scale=scale, bounds=baselines)


def evaluate_attention(model: nn.Module, ids: torch.Tensor, configs: list[AnchorConfig], *,
                       baselines: bool = True, progress: bool = True) -> list[AttentionReport]:
    """Score AnchorAttention (and the baselines) on every layer of ``model`` for token ids [1, N],
    once per config (one capture serves all of them, e.g. a theta sweep)."""
    layers = capture_layers(model, ids)
    reports = []
    for config in configs:
        report = AttentionReport(config=config, seqlen=ids.shape[1])
        for qkv in tqdm(layers.values(), desc=f"attention theta={config.theta:g}", disable=not progress,
                        unit="layer"):
            report.layers.append(score_layer(qkv, config, report, baselines))
        reports.append(report)
    return reports
