"""Recall against density over a theta sweep: ``attention_sweep.{json,md,png}``.

Every row holds each selector's pooled metrics at that theta: the baselines matched to
AnchorAttention's mean density over heads, the two recall bounds (``per_row_topk``, each row's
largest probabilities; ``optimum``, each head's largest probabilities at AnchorAttention's pair
count in that head) and every selector's ``gap_to_optimum`` at its own per-head pair counts.
"""

from dataclasses import replace

from sparsa.attention.evaluate import evaluate_attention
from sparsa.bench.results import machine, write_results
from sparsa.data import load_corpus, read_text_file, tokenize
from sparsa.errors import SparsaError
from sparsa.nn.models import load_model

SELECTORS = ("anchor", "vertical_slash", "flex_blocks", "per_row_topk", "optimum", "streaming")


def sweep_payload(reports, *, model: str, device: str) -> dict:
    """One row per theta: every selector's pooled metrics at that theta's density."""
    rows = [{"theta": r.config.theta, **{name: r.overall[name] for name in SELECTORS if name in r.overall}}
            for r in reports]
    return {"machine": machine(device), "model": model, "seqlen": reports[0].seqlen,
            "config": reports[0].config.to_dict(), "rows": rows}


def sweep_markdown(payload: dict) -> str:
    names = [n for n in SELECTORS if n in payload["rows"][0]]
    gaps = [n for n in names if "gap_to_optimum" in payload["rows"][0][n]]
    lines = [f"# AnchorAttention sweep: {payload['model']}, {payload['seqlen']} tokens",
             "", f"{payload['machine']['date']}, {payload['machine']['cpu']} ({payload['machine']['cores']} cores), "
                 f"device {payload['machine']['device']}, torch {payload['machine']['torch']}",
             "", "Recall (share of the dense softmax mass kept) at each theta's density; the baselines are "
                 "matched to AnchorAttention's mean density over heads; per_row_topk keeps each row's largest "
                 "probabilities, optimum each head's largest probabilities at AnchorAttention's pair count in "
                 "that head (the best any mask of those counts reaches). Gap: the optimum at the selector's own "
                 "per-head pair counts minus its recall.", "",
             "| theta | density | " + " | ".join(f"{n} recall" for n in names)
             + "".join(f" | {n} gap" for n in gaps) + " | anchor rel_err |",
             "|---|---|" + "---|" * (len(names) + len(gaps)) + "---|"]
    for row in payload["rows"]:
        lines.append(f"| {row['theta']:g} | {row['anchor']['density']:.4f} | "
                     + " | ".join(f"{row[n]['recall']:.4f}" for n in names)
                     + "".join(f" | {row[n]['gap_to_optimum']:.4f}" for n in gaps)
                     + f" | {row['anchor']['rel_err']:.4f} |")
    return "\n".join(lines) + "\n"


def sweep_figure(payload: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    rows = payload["rows"]
    for name, style in (("anchor", "o-"), ("vertical_slash", "s--"), ("flex_blocks", "^--"),
                        ("per_row_topk", "k:"), ("optimum", "k-")):
        if name in rows[0]:
            ax.plot([r[name]["density"] for r in rows], [r[name]["recall"] for r in rows], style, label=name)
    if "streaming" in rows[0]:
        ax.plot([rows[0]["streaming"]["density"]], [rows[0]["streaming"]["recall"]], "rx", ms=9, label="streaming")
    for r in rows:
        ax.annotate(f"θ={r['theta']:g}", (r["anchor"]["density"], r["anchor"]["recall"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("density (computed pairs / causal pairs)")
    ax.set_ylabel("recall (dense softmax mass kept)")
    ax.set_title(f"{payload['model']}, {payload['seqlen']} tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_sweep(reports, out_dir, *, model: str, device: str) -> dict:
    """Write the sweep's result files; returns ``{"files": [...], "rows": [...]}``."""
    payload = sweep_payload(reports, model=model, device=device)
    paths = write_results(out_dir, "attention_sweep", payload, sweep_markdown(payload), sweep_figure(payload))
    return {"files": [str(p) for p in paths], "rows": payload["rows"]}


SWEEP_THETAS = (2.0, 3.0, 4.0, 5.0, 7.0, 9.0)  # the thresholds a sweep adds to the one asked


def evaluate_anchor(model_spec: str, config, *, seqlen: int = 4096, text_file: str | None = None,
                    device: str = "cpu", sweep: bool = False, out=None, baselines: bool = True,
                    layers: bool = False, progress: bool = True) -> dict:
    """What ``sparsa attention eval`` runs: AnchorAttention ``config`` (an ``AnchorConfig``) on the
    real attention of ``model_spec`` over the first ``seqlen`` tokens of ``text_file`` (default the
    wiki evaluation split): recall, density and error against dense, the baselines beside it
    (``baselines``), per-layer figures (``layers``), and with ``sweep`` every threshold of
    ``SWEEP_THETAS`` too, written to ``out`` as a table and a plot."""
    thetas = sorted(set(SWEEP_THETAS) | {config.theta}) if sweep else [config.theta]
    text = read_text_file(text_file) if text_file else load_corpus("wiki").eval
    source = text_file or "wiki evaluation split"
    lm = load_model(model_spec)
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit and seqlen > limit:
        raise SparsaError(f"--seqlen {seqlen} exceeds the model's context of {limit} tokens")
    if seqlen < 2:
        raise SparsaError(f"--seqlen {seqlen} must be at least 2")
    ids = tokenize(lm.tokenizer, text)
    if ids.numel() < seqlen:
        raise SparsaError(f"{source}: {ids.numel()} tokens, fewer than --seqlen {seqlen}")
    lm.model.to(device)
    ids = ids[:seqlen][None].to(device)
    reports = evaluate_attention(lm.model, ids, [replace(config, theta=t) for t in thetas], baselines=baselines,
                                 progress=progress)
    report = reports[thetas.index(config.theta)]
    result = {"model": model_spec, "text": source, "machine": machine(device), **report.to_dict()}
    if not layers:
        del result["layers"]
    if sweep:
        result["sweep"] = write_sweep(reports, out, model=model_spec, device=device)
    return result
