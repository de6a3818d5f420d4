"""Render the README's measured tables from ``bench/results/*.json``.

The README marks each generated block with HTML comments::

    <!-- results: quality -->
    ...rendered text, never edited by hand...
    <!-- /results -->

``python -m sparsa.bench.readme`` re-renders every marked block in place (atomically) and prints
the blocks that changed; ``--check`` changes nothing and exits 1 naming the stale blocks. Each block
has one renderer in ``RENDERERS``: ``function(results_dir: Path) -> str`` (markdown, no trailing
newline) that reads its results file(s) through ``load`` and opens with the date and machine
(``measured``). A new block is one ``@renderer("name")`` function plus its markers in the README.
"""

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sparsa.bench.decode import settings_sentence, table_cells
from sparsa.bench.gguf import report as gguf_report
from sparsa.bench.merge_report import LABELS
from sparsa.bench.results import write_atomic
from sparsa.errors import SparsaError

REPO = Path(__file__).resolve().parents[3]
RENDERERS: dict[str, Callable[[Path], str]] = {}
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)


def renderer(name: str):
    """Register ``fn(results_dir) -> markdown`` as the renderer of README block ``name``."""
    def register(fn):
        RENDERERS[name] = fn
        return fn
    return register


def load(results_dir: Path, name: str) -> dict:
    """The parsed ``results_dir/<name>.json``; a missing or unreadable file raises naming its path."""
    path = Path(results_dir) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SparsaError(f"{path}: results file not found; run its `sparsa bench` command first") from None
    except json.JSONDecodeError as e:
        raise SparsaError(f"{path}: not valid JSON ({e})") from None


def machine_name(m: dict) -> str:
    """``H100 80GB HBM3`` for a GPU run (the vendor dropped), ``2-core x86_64 CPU`` for a CPU one."""
    if "gpu" in m:
        return m["gpu"].removeprefix("NVIDIA ")
    return f"{m['cores']}-core {m['cpu']} CPU"


def measured(*machines: dict) -> str:
    """``Measured <date> on <machine> (torch <version>)``, each distinct machine once, in order."""
    parts = list(dict.fromkeys(f"{m['date']} on {machine_name(m)} (torch {m['torch']})" for m in machines))
    return "Measured " + " and ".join(parts)


def caption(source: str, *machines: dict) -> str:
    """The line each block opens with: where its numbers come from and when and where they ran."""
    return f"_{measured(*machines)}; rendered from `bench/results/{source}` by `python -m sparsa.bench.readme`._"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: ``header`` cells, then one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@renderer("quality")
def render_quality(results_dir: Path) -> str:
    """Perplexity against bits/param of every method (``sparsa bench quality``)."""
    payload = load(results_dir, "quality")
    rows = payload["rows"]
    body = [[r["row"], f"{r['bits_per_param']:.3f}", f"{r['ppl']['wiki']:.2f}", f"{r['ppl']['shakespeare']:.2f}",
             "-" if r["compress_seconds"] is None else f"{r['compress_seconds']:.0f}", machine_name(r["machine"])]
            for r in rows]
    header = ["row", "bits/param", "ppl wiki", "ppl shakespeare", "compress s", "on"]
    return caption("quality.json", *(r["machine"] for r in rows)) + "\n\n" + table(header, body)


@renderer("acceptance")
def render_acceptance(results_dir: Path) -> str:
    """The SpQR sweep at the acceptance protocol (``spqr_sweep.json``): dense, then each run."""
    payload = load(results_dir, "spqr_sweep")
    body = [["dense fp32", "32.000", f"{payload['dense_ppl_wiki']:.3f}", "-", "-"]]
    body += [[r["label"], f"{r['bits_per_param']:.3f}", f"{r['ppl_wiki']:.3f}", f"{r['compress_seconds']:.0f}",
              f"{r['mean_block_error']:.2e}"] for r in payload["rows"]]
    header = ["run", "bits/param", "ppl wiki", "compress s", "mean block err"]
    return (caption("spqr_sweep.json", payload["machine"]) + f" Protocol: {payload['protocol']}.\n\n"
            + table(header, body))


SPMM_CASES = [(3072, 768, 128, 0.7), (3072, 768, 128, 0.9), (768, 3072, 384, 0.9), (1536, 576, 1, 0.9),
              (1536, 576, 16, 0.9), (4096, 4096, 1, 0.9), (11008, 4096, 1, 0.9), (11008, 4096, 16, 0.9)]


@renderer("spmm")
def render_spmm(results_dir: Path) -> str:
    """Speed-up over dense fp32 of every CPU SpMM peer on the ``SPMM_CASES`` (out, in, tokens, sparsity)."""
    payload = load(results_dir, "spmm")
    cases = {(c["out"], c["in"], c["tokens"], round(c["sparsity"], 4)): c for c in payload["cases"]}
    picked = []
    for key in SPMM_CASES:
        if key not in cases:
            raise SparsaError(f"{Path(results_dir) / 'spmm.json'}: no case out x in x tokens x sparsity {key}")
        picked.append(cases[key])
    peers = [n for n in picked[0]["ms"] if n != "dense fp32"]
    body = [[f"{c['out']}x{c['in']}", str(c["tokens"]), f"{c['sparsity']:.0%}", f"{c['ms']['dense fp32']:.3f}",
             *(f"{c['ms']['dense fp32'] / c['ms'][p]:.2f}x" if p in c["ms"] else "n/a" for p in peers)]
            for c in picked]
    header = ["W (out x in)", "tokens", "sparsity", "dense fp32 ms", *peers]
    return caption("spmm.json", payload["machine"]) + "\n\n" + table(header, body)


@renderer("encoder")
def render_encoder(results_dir: Path) -> str:
    """Sentence-embedding latency and agreement with dense of each variant (``sparsa bench encoder``)."""
    payload = load(results_dir, "encoder")
    body = [[r["variant"], f"{r['ms']['1']:.1f}", f"{r['x_dense']['1']:.2f}x", f"{r['ms']['8']:.1f}",
             f"{r['x_dense']['8']:.2f}x", f"{r['agreement']['cosine_mean']:.3f} / {r['agreement']['cosine_min']:.3f}",
             f"{r['agreement']['topk_overlap']:.3f}"] for r in payload["rows"]]
    header = ["variant", "ms batch 1", "x dense", "ms batch 8", "x dense", "cosine mean / min", "top-10 overlap"]
    return caption("encoder.json", payload["machine"]) + "\n\n" + table(header, body)


@renderer("gpu")
def render_gpu(results_dir: Path) -> str:
    """Ours / cuBLAS fp16 µs per (shape, sparsity) and token count, dense over ours in brackets."""
    payload = load(results_dir, "gpu")
    tokens = payload["settings"]["tokens"]
    by_row: dict[tuple, dict] = {}
    for c in payload["cases"]:
        by_row.setdefault((c["out"], c["in"], c["sparsity"]), {})[c["tokens"]] = c["ms"]
    body = []
    for (out, inp, sparsity), cells in by_row.items():
        row = [f"{out}x{inp}", f"{sparsity:.0%}"]
        for t in tokens:
            ours, dense = cells[t]["ours Triton block"] * 1e3, cells[t]["cuBLAS fp16 dense"] * 1e3
            row.append(f"{ours:.0f} / {dense:.0f} µs ({dense / ours:.2f}x)")
        body.append(row)
    header = ["out x in", "sparsity", *(f"{t} token{'s' if t > 1 else ''}" for t in tokens)]
    return caption("gpu.json", payload["machine"]) + "\n\n" + table(header, body)


@renderer("gpu_decode")
def render_gpu_decode(results_dir: Path) -> str:
    """Batch-1 decode tokens/s of the 7B-shaped stack (``sparsa bench gpu``), the median round and each round."""
    payload = load(results_dir, "gpu")
    d = payload["settings"]["decode"]
    body = [[r["variant"], f"{r['tokens_per_s']:.1f}", f"{r['x_dense']:.2f}x",
             ", ".join(f"{x:.1f}" for x in r["tokens_per_s_rounds"])] for r in payload["decode"]]
    header = ["variant", "tokens/s (median round)", "x dense", "tokens/s per round"]
    return (caption("gpu.json", payload["machine"]) + f" {d['layers']} layers, hidden {d['hidden']}, MLP {d['ffn']}, "
            f"{d['new_tokens']} new tokens, batch 1.\n\n" + table(header, body))


@renderer("decode")
def render_decode(results_dir: Path) -> str:
    """``sparsa bench decode``: greedy tokens/s of every SmolLM2 variant, its ratio, match and kernel."""
    payload = load(results_dir, "decode")
    header, rows = table_cells(payload)
    return caption("decode.json", payload["machine"]) + " " + settings_sentence(payload) + "\n\n" + table(header, rows)


@renderer("attention_pooled")
def render_attention_pooled(results_dir: Path) -> str:
    """AnchorAttention kernel latency with the ``pooled`` rule against SDPA, ms per call."""
    payload = load(results_dir, "attention_pooled")
    cfg = payload["settings"]["config"]
    body = [[str(r["seqlen"]), f"{r['sdpa_ms']:.2f}", f"{r['anchor_ms']:.2f} ({r['speedup']:.2f}x)",
             f"{r['selection_ms']:.2f} ({r['selection_share']:.0%})", f"{r['compute_ms']:.2f}",
             f"{r['streaming_ms']:.2f}", f"{r['density']:.3f}", f"{r['sdpa_ms'] / r['compute_ms']:.2f}x"]
            for r in payload["rows"]]
    header = ["tokens", "SDPA", "AnchorAttention", "selection K1+K2 (share)", "compute K3", "streaming", "density",
              "K3 vs SDPA"]
    return (caption("attention_pooled.json", payload["machine"]) + f" `{cfg['identify']}` rule, theta "
            f"{cfg['theta']:g}, `block_m` {cfg['block_m']}, step {cfg['step']}.\n\n" + table(header, body))


def _router(r: dict) -> str:
    return f"{r['router_accuracy']:.0%}" if "router_accuracy" in r else "-"


@renderer("merge_digits")
def render_merge_digits(results_dir: Path) -> str:
    """Digits family of ``sparsa bench merge``: normalized accuracy, bits, batch latency, router accuracy."""
    payload = load(results_dir, "merge")
    body = [[LABELS.get(r["method"], r["method"]), f"{r['mean_normalized']:.3f}", f"{r['bits_per_param']:.2f}",
             f"{r['batch_ms']:.2f}", _router(r)] for r in payload["rows"]]
    header = ["method", "normalized", "bits/param/task", "ms per batch", "router, single samples"]
    return caption("merge.json", payload["machine"]) + "\n\n" + table(header, body)


@renderer("merge_language")
def render_merge_language(results_dir: Path) -> str:
    """Language family of ``sparsa bench merge``: normalized score, perplexity per corpus, bits, router accuracy."""
    payload = load(results_dir, "merge")
    lm = payload["lm"]
    body = [[LABELS.get(r["method"], r["method"]), f"{r['mean_normalized']:.3f}",
             *(f"{r['perplexity'][t]:.2f}" for t in lm["tasks"]), f"{r['bits_per_param']:.2f}", _router(r)]
            for r in lm["rows"]]
    header = ["method", "normalized", *(f"ppl {t}" for t in lm["tasks"]), "bits/param/task", "router, single windows"]
    return caption("merge.json", payload["machine"]) + "\n\n" + table(header, body)


def render_demo_file(results_dir: Path, name: str) -> str:
    """A ``sparsa demo --out`` table (``<name>.json``): dense, then the reloaded SpQR checkpoint."""
    payload = load(results_dir, name)
    s, rows = payload["settings"], payload["rows"]
    names = list(rows[0]["ppl"])
    body = [[r["model"], *(f"{r['ppl'][n]:.3f}" for n in names), f"{r['bytes']:,}", f"{r['bits_per_param']:.3f}",
             "-" if r["seconds"] is None else f"{r['seconds']:.1f}"] for r in rows]
    header = ["model", *(f"ppl {n}" for n in names), "bytes", "bits/param", "compress s"]
    return (caption(f"{name}.json", payload["machine"]) + f" {s['windows']} evaluation windows x {s['seqlen']} "
            f"tokens per corpus, calibration {s['nsamples']} x {s['calib_seqlen']} tokens, `--bos {s['bos']}`.\n\n"
            + table(header, body))


@renderer("demo")
def render_demo(results_dir: Path) -> str:
    """``make demo``'s table (``sparsa demo --out bench/results``)."""
    return render_demo_file(results_dir, "demo")


@renderer("demo_avx2")
def render_demo_avx2(results_dir: Path) -> str:
    """The same demo on a CPU without AVX-512 (``sparsa demo --out DIR``, ``demo.json`` renamed)."""
    return render_demo_file(results_dir, "demo_avx2")


def _number(x: float | None, fmt: str, unit: str = "") -> str:
    return "-" if x is None else format(x, fmt) + unit


@renderer("ba")
def render_ba(results_dir: Path) -> str:
    """``sparsa bench ba``: every solver under the same stopping rules, time to the common target."""
    payload = load(results_dir, "ba")
    rules, target = payload["settings"]["rules"], payload["settings"]["target_rel"]
    body = [[str(r["cameras"]), f"{r['observations']:,}", f"{r['solver']} ({r['device']})",
             f"{r['final_cost']:.10g}", "" if r["solver"] == "pycolmap" else f"{r['cost_rel_to_pycolmap']:+.1e}",
             str(r["iterations"]), f"{r['seconds']:.3g}", _number(r["seconds_per_iteration"], ".3g"),
             _number(r["seconds_to_target"], ".3g"), _number(r.get("target_speedup_over_pycolmap"), ".2f", "x"),
             f"{r['rss_growth_bytes'] / 2**20:.0f} MiB"] for r in payload["rows"]]
    header = ["cameras", "observations", "solver", "final cost", "vs pycolmap", "iterations", "seconds",
              "s / iteration", "s to target", "x pycolmap to target", "peak RSS growth"]
    return (caption("ba.json", payload["machine"]) + f" Every solver: at most {rules['max_iterations']} iterations, "
            f"function tolerance {rules['function_tolerance']:g}, gradient tolerance {rules['gradient_tolerance']:g}, "
            f"parameter tolerance {rules['parameter_tolerance']:g}; every timer starts before the solver builds "
            f"its problem; the target is {target:g} (relative) above the scene's lowest final cost.\n\n"
            + table(header, body))


@renderer("sfm")
def render_sfm(results_dir: Path) -> str:
    """``sparsa bench sfm``: both mappers' accuracy and time per scene, our stages, and the growth fit."""
    payload = load(results_dir, "sfm")
    rows = payload["rows"]
    body = []
    for r in rows:
        name = f"{r['solver']} ({r['device']})"
        if "failed" in r:
            body.append([r["kind"], str(r["images_truth"]), name, f"failed: {r['failed']}", "", "", "",
                         f"{r['seconds']:.3g}", "", ""])
            continue
        rot, cen, auc = r["rotation_error_deg"], r["centre_error"], r["auc"]
        body.append([r["kind"], str(r["images_truth"]), name, f"{r['images']}", f"{rot['median']:.3f} / {rot['p90']:.3f}",
                     f"{cen['median']:.4f} / {cen['p90']:.4f}", f"{auc['1']:.3f} / {auc['3']:.3f} / {auc['5']:.3f}",
                     f"{r['seconds']:.3g}", f"{r['speedup_over_pycolmap']:.2f}x", f"{r['peak_rss_bytes'] / 2**20:.0f} MiB"])
    header = ["scene", "images", "mapper", "registered", "rotation error ° (median / P90)", "centre error (median / P90)",
              "AUC @1° / 3° / 5°", "seconds", "x pycolmap", "peak RSS"]
    ours = [r for r in rows if r["solver"] == "sparsa" and r["device"] == "cpu" and "stages" in r]
    names = [st["stage"] for st in ours[0]["stages"]] if ours else []
    stages = table(["scene", "images", "observations", *names],
                   [[r["kind"], str(r["images_truth"]), f"{r['observations']:,}",
                     *(f"{st['seconds']:.2f}" for st in r["stages"])] for r in ours])
    ours = [r for r in ours if r["kind"] == "ring"]  # the growth fit: one kind of scene
    text = (caption("sfm.json", payload["machine"]) + " Same databases, threads and stopping rules for both; each "
            "timer covers reading the database, mapping and writing the model.\n\n" + table(header, body)
            + "\n\nsparsa's seconds per stage (CPU):\n\n" + stages)
    if len(ours) >= 2:
        import math

        x = [math.log(r["observations"]) for r in ours]
        y = [math.log(r["seconds"]) for r in ours]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sum((u - mx) ** 2 for u in x)
        a = my - b * mx
        per_image = ours[-1]["observations"] / ours[-1]["images"]
        at_5000 = math.exp(a) * (5000 * per_image) ** b
        text += (f"\n\nGrowth (least squares on the rows above): seconds ≈ {math.exp(a):.3g} · observations"
                 f"^{b:.2f}; at 5000 images of this scene (~{5000 * per_image:,.0f} observations) that predicts "
                 f"{at_5000:,.0f} s, if the reduced camera system is still factored densely: above 1333 images "
                 "(8000 unknowns) BA falls back to PCG, which on a 1000-image ring took over 7 minutes, so "
                 "the fit does not hold there yet.")
    return text


ATTENTION_SELECTORS = ("anchor", "vertical_slash", "flex_blocks", "streaming", "per_row_topk", "optimum")


@renderer("attention_sweep")
def render_attention_sweep(results_dir: Path) -> str:
    """Recall at each theta's density (``attention_sweep.json``): AnchorAttention, the baselines at its
    mean density, the bounds, and each selector's gap to the optimum."""
    payload = load(results_dir, "attention_sweep")
    names = [n for n in ATTENTION_SELECTORS if n in payload["rows"][0] and n != "streaming"]
    body = [[f"{r['theta']:g}", f"{r['anchor']['density']:.3f}",
             *(f"{r[n]['recall']:.4f}" + (f" ({r[n]['gap_to_optimum']:.4f})" if n != "optimum" else "")
               for n in names), f"{r['anchor']['rel_err']:.3f}"] for r in payload["rows"]]
    cfg = payload["config"]
    return (caption("attention_sweep.json", payload["machine"]) + f" {payload['model']}, {payload['seqlen']} tokens, "
            f"`{cfg['identify']}` rule; recall (gap to the optimum in brackets).\n\n"
            + table(["theta", "density", *names, "anchor rel_err"], body))


def render_attention_eval(results_dir: Path, seqlen: int) -> str:
    """Every selector's pooled recall, density and gap at the default config (``attention eval --json``)."""
    name = f"attention_eval_{seqlen}"
    payload = load(results_dir, name)
    overall = payload["overall"]
    body = [[n, f"{overall[n]['recall']:.4f}", f"{overall[n]['density']:.4f}",
             _number(overall[n].get("gap_to_optimum"), ".4f"), _number(overall[n].get("rel_err"), ".3f")]
            for n in ATTENTION_SELECTORS if n in overall]
    return (caption(f"{name}.json", payload["machine"]) + f" {payload['model']}, {payload['seqlen']} tokens of the "
            f"{payload['text']}, theta {payload['theta']:g}.\n\n"
            + table(["selector", "recall", "density", "gap to optimum", "rel_err"], body))


@renderer("attention_eval_4096")
def render_attention_eval_4096(results_dir: Path) -> str:
    return render_attention_eval(results_dir, 4096)


@renderer("attention_eval_8192")
def render_attention_eval_8192(results_dir: Path) -> str:
    return render_attention_eval(results_dir, 8192)


@renderer("gguf")
def render_gguf(results_dir: Path) -> str:
    """sparsa's GGUF exports against llama.cpp's quantizer (``sparsa bench gguf``)."""
    payload = load(results_dir, "gguf")
    return caption("gguf.json", payload["machine"]) + "\n\n" + gguf_report(payload)


def render(text: str, results_dir: Path) -> tuple[str, list[str]]:
    """``text`` with every marked block re-rendered, and the names of the blocks whose text changed."""
    changed: list[str] = []

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SparsaError(f"README block `{name}` has no renderer; known: {', '.join(sorted(RENDERERS))}")
        body = "\n" + RENDERERS[name](Path(results_dir)) + "\n\n"
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    rendered = BLOCK.sub(fill, text)
    opened = len(re.findall(r"<!-- results:", text))
    if opened != len(BLOCK.findall(text)):
        raise SparsaError(f"README: {opened} `<!-- results: NAME -->` markers but {len(BLOCK.findall(text))} "
                          "blocks closed by `<!-- /results -->`; close each block")
    return rendered, changed


def stale_blocks(readme: Path, results_dir: Path) -> list[str]:
    """Names of the README's blocks that differ from what their results render; writes nothing."""
    return render(Path(readme).read_text(), results_dir)[1]


def update(readme: Path, results_dir: Path) -> list[str]:
    """Re-render ``readme``'s blocks in place (atomic replace when any changed); returns the changed names."""
    text, changed = render(Path(readme).read_text(), results_dir)
    if changed:
        write_atomic(Path(readme), text.encode())
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsa.bench.readme [--check]``: rewrite (or check) the README's results blocks."""
    p = argparse.ArgumentParser(prog="python -m sparsa.bench.readme", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 listing the stale blocks")
    p.add_argument("--readme", type=Path, default=REPO / "README.md")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    try:
        changed = (stale_blocks if args.check else update)(args.readme, args.results)
    except SparsaError as e:
        print(f"sparsa: error: {e}", file=sys.stderr)
        return 2
    verb = "stale" if args.check else "rewritten"
    print("\n".join(f"{verb}: {name}" for name in changed) or "README results blocks are up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
