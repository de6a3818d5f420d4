"""``sparsa bench quality``: perplexity against bits/param for every compression method.

Every row starts from the same dense model, is compressed with the same calibration windows,
saved as a checkpoint (bits/param are read from the bytes written) and evaluated by the GPTQ
protocol on the evaluation splits.
"""

import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sparsa.bench.results import machine, write_results
from sparsa.compress import (GPTQConfig, MagnitudeConfig, RTNConfig, SparseGPTConfig, SpQRConfig, WandaConfig,
                             compress_)
from sparsa.data import calibration_windows, load_corpus, tokenize
from sparsa.evaluate import load_texts, perplexities
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.models import load_model
from sparsa.nn.surgery import linear_footprint


@dataclass(frozen=True)
class QualitySettings:
    """The protocol: calibration windows, evaluation window length and count, corpora, device."""

    model: str = "smollm2-135m"
    nsamples: int = 128
    calib_seqlen: int = 2048
    calib: str = "wiki"
    seqlen: int = 2048
    windows: int | None = None
    ppl: str = "wiki,shakespeare"
    device: str = "cpu"
    seed: int = 0


def quality_rows(s: QualitySettings) -> list[tuple[str, object]]:
    """(label, config or None for dense) of every row of the report."""
    cal = {"nsamples": s.nsamples, "seqlen": s.calib_seqlen, "calib": s.calib}
    rows = [("dense", None)]
    for bits in (3, 4):
        rows += [(f"rtn-{bits} g128", RTNConfig(bits=bits, group_size=128)),
                 (f"gptq-{bits} g128", GPTQConfig(bits=bits, group_size=128, **cal))]
    rows += [(f"spqr-{bits} tau{tau}", SpQRConfig(bits=bits, outlier_threshold=tau, **cal))
             for bits, tau in ((3, 0.2), (3, 0.3), (4, 0.2))]
    for label, sparsity, pattern in (("50%", 0.5, "unstructured"), ("2:4", None, "2:4"), ("4:8", None, "4:8")):
        rows += [(f"magnitude {label}", MagnitudeConfig(sparsity=sparsity, pattern=pattern)),
                 (f"wanda {label}", WandaConfig(sparsity=sparsity, pattern=pattern, **cal)),
                 (f"sparsegpt {label}", SparseGPTConfig(sparsity=sparsity, pattern=pattern, **cal))]
    rows.append(("sparsegpt 50% + 4-bit g128", SparseGPTConfig(sparsity=0.5, bits=4, group_size=128, **cal)))
    return rows


def run_row(label: str, config, s: QualitySettings, texts: dict, windows, progress: bool) -> dict:
    """Compress (if ``config``), save, measure one row."""
    lm = load_model(s.model)
    row = {"row": label, "method": config.to_dict() if config else None, "compress_seconds": None}
    if config is not None:
        start = time.perf_counter()
        compress_(lm.model, config, calibration=windows if config.needs_calibration else None, device=s.device,
                  progress=progress)
        row["compress_seconds"] = round(time.perf_counter() - start, 2)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = save_checkpoint(lm.model, lm.tokenizer, f"{tmp}/ck", method=config.to_dict())
        row["bits_per_param"], row["bytes"] = manifest["bits_per_param"], manifest["bytes"]
    else:
        params, nbytes = linear_footprint(lm.model)
        row["bits_per_param"], row["bytes"] = 8 * nbytes / params, nbytes
    lm.model.to(s.device)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=s.seqlen, max_windows=s.windows, device=s.device,
                           progress=progress)
    row["ppl"] = {name: r.ppl for name, r in results.items()}
    row["eval_windows"] = {name: r.windows for name, r in results.items()}
    return row


def describe(m: dict) -> str:
    """One line naming the date and machine."""
    where = f"{m['gpu']} (torch {m['torch']})" if m.get("gpu") else f"{m['cores']}-core {m['cpu']} CPU (torch {m['torch']})"
    return f"{m['date']} on {where}"


def markdown(payload: dict) -> str:
    s, rows = payload["settings"], payload["rows"]
    names = list(rows[0]["ppl"]) if rows else []
    lines = [f"# Quality: perplexity vs bits/param ({s['model']})", "",
             f"Measured {describe(payload['machine'])}.", "",
             f"Calibration: {s['nsamples']} x {s['calib_seqlen']} tokens of `{s['calib']}` (seed {s['seed']}); "
             f"evaluation: seqlen {s['seqlen']}, windows {s['windows'] or 'all'} of each evaluation split. "
             "bits/param = bytes of the compressed linear layers as saved / their parameters.", "",
             "| row | bits/param | " + " | ".join(f"ppl {n}" for n in names) + " | compress s |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        secs = "-" if r["compress_seconds"] is None else f"{r['compress_seconds']:.1f}"
        lines.append(f"| {r['row']} | {r['bits_per_param']:.3f} | "
                     + " | ".join(f"{r['ppl'][n]:.3f}" for n in names) + f" | {secs} |")
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """Perplexity (log) against bits/param, one point per row, for the first corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    corpus = next(iter(rows[0]["ppl"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        x, y = min(r["bits_per_param"], 18), r["ppl"][corpus]
        ax.scatter(x, y, s=20)
        ax.annotate(r["row"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("bits / param (compressed linear layers, dense capped at 18)")
    ax.set_ylabel(f"perplexity ({corpus}, seqlen {payload['settings']['seqlen']})")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{payload['settings']['model']}: quality per bit")
    return fig


def run_quality(s: QualitySettings, *, only: list[str] | None = None, out_dir="bench/results",
                progress: bool = True) -> dict:
    """Run every row (or those whose label contains one of ``only``); results are rewritten after each row."""
    rows = [(label, c) for label, c in quality_rows(s) if not only or any(o in label for o in only)]
    texts = load_texts(s.ppl, None)
    tokenizer = load_model(s.model).tokenizer
    windows = calibration_windows(tokenize(tokenizer, load_corpus(s.calib).calib), s.nsamples, s.calib_seqlen,
                                  s.seed, source=f"{s.calib} calibration split")
    torch.manual_seed(s.seed)
    payload = {"settings": s.__dict__, "machine": machine(s.device), "rows": []}
    for label, config in tqdm(rows, desc="bench quality", disable=not progress, unit="row"):
        payload["rows"].append(run_row(label, config, s, texts, windows, progress))
        fig = figure(payload)
        write_results(out_dir, "quality", payload, markdown(payload), fig)
        fig.clf()
    return payload
