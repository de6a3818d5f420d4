"""``sparsa bench quality``: perplexity against bits/param for every compression method.

Every row starts from the same dense model, is compressed with the same calibration windows,
saved as a checkpoint (bits/param are read from the bytes written) and evaluated by the GPTQ
protocol on the evaluation splits. Each row records the machine it ran on, so rows measured
under the same protocol on different machines (``--rows``) share one table.
"""

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsa.bench.results import machine, write_results
from sparsa.compress import (AutoConfig, GPTQConfig, MagnitudeConfig, RTNConfig, SparseGPTConfig, SpQRConfig, WandaConfig,
                             compress_)
from sparsa.data import calibration_windows, load_corpus, tokenize
from sparsa.data.tokens import bos_for
from sparsa.evaluate import load_texts, perplexities
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.models import load_model
from sparsa.nn.surgery import linear_footprint


@dataclass(frozen=True)
class QualitySettings:
    """The protocol (calibration windows, evaluation window length and count, corpora, the ``--bos``
    protocol of every window, seed) and the device it runs on."""

    model: str = "smollm2-135m"
    nsamples: int = 128
    calib_seqlen: int = 2048
    calib: str = "wiki"
    seqlen: int = 2048
    windows: int | None = None
    ppl: str = "wiki,shakespeare"
    bos: str = "auto"
    device: str = "cpu"
    seed: int = 0

    def protocol(self) -> dict:
        """Every setting but the device: rows measured under equal protocols are comparable."""
        return {k: v for k, v in self.__dict__.items() if k != "device"}


def quality_rows(s: QualitySettings) -> list[tuple[str, object]]:
    """(label, config or None for dense) of every row of the report."""
    cal = {"nsamples": s.nsamples, "seqlen": s.calib_seqlen, "calib": s.calib}
    rows = [("dense", None)]
    for bits in (3, 4):
        rows += [(f"rtn-{bits} g128", RTNConfig(bits=bits, group_size=128)),
                 (f"gptq-{bits} g128", GPTQConfig(bits=bits, group_size=128, **cal))]
    rows += [("spqr-3 recipe (tau0.3 damp0.01)", SpQRConfig(bits=3, **cal))]
    rows += [(f"spqr-3 tau{tau} damp1.0", SpQRConfig(bits=3, outlier_threshold=tau, percdamp=1.0, **cal))
             for tau in (0.2, 0.3)]
    rows += [("spqr-4 recipe (tau0.2 damp1.0)", SpQRConfig(bits=4, **cal))]
    for label, sparsity, pattern in (("50%", 0.5, "unstructured"), ("2:4", None, "2:4"), ("4:8", None, "4:8")):
        rows += [(f"magnitude {label}", MagnitudeConfig(sparsity=sparsity, pattern=pattern)),
                 (f"wanda {label}", WandaConfig(sparsity=sparsity, pattern=pattern, **cal)),
                 (f"sparsegpt {label}", SparseGPTConfig(sparsity=sparsity, pattern=pattern, **cal))]
    rows.append(("sparsegpt 50% + 4-bit g128", SparseGPTConfig(sparsity=0.5, bits=4, group_size=128, **cal)))
    rows.append(("auto 3.5", AutoConfig(budget=3.5, **cal)))
    return rows


def run_row(label: str, config, s: QualitySettings, texts: dict, windows, progress: bool) -> dict:
    """Compress (if ``config``), save, measure one row; the row records its evaluation windows' BOS."""
    lm = load_model(s.model)
    row = {"row": label, "method": config.to_dict() if config else None, "compress_seconds": None,
           "machine": machine(s.device)}
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
    bos = bos_for(lm.tokenizer, s.bos)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=s.seqlen, max_windows=s.windows, bos=bos,
                           device=s.device, progress=progress)
    row["ppl"] = {name: r.ppl for name, r in results.items()}
    row["eval_windows"] = {name: r.windows for name, r in results.items()}
    row["bos"] = bos.to_dict()
    return row


def short_name(m: dict) -> str:
    """The machine in a few words: the GPU's name, or the CPU's core count."""
    return m["gpu"].removeprefix("NVIDIA ") if m.get("gpu") else f"{m['cores']}-core CPU"


def describe(m: dict) -> str:
    """The date and the machine in full."""
    where = f"{m['gpu']} (torch {m['torch']})" if m.get("gpu") else f"{m['cores']}-core {m['cpu']} CPU (torch {m['torch']})"
    return f"{m['date']} on {where}"


def bos_sentence(protocol: str, rows: list[dict]) -> str:
    """The ``--bos`` protocol, and whether the rows (each records its own) had a BOS token added."""
    added = {r["bos"]["added"] for r in rows if "bos" in r}
    if added == {True}:
        return f"BOS protocol `{protocol}` (a BOS token added)."
    if added == {False}:
        return f"BOS protocol `{protocol}` (the tokenizer adds no BOS: none added)."
    return f"BOS protocol `{protocol}`."


def markdown(payload: dict) -> str:
    s, rows = payload["settings"], payload["rows"]
    names = list(rows[0]["ppl"]) if rows else []
    machines = {short_name(r["machine"]): describe(r["machine"]) for r in rows}
    lines = [f"# Quality: perplexity vs bits/param ({s['model']})", "",
             "Measured " + "; ".join(f"{full} ({short})" for short, full in machines.items()) + ".", "",
             f"Calibration: {s['nsamples']} x {s['calib_seqlen']} tokens of `{s['calib']}` (seed {s['seed']}); "
             f"evaluation: seqlen {s['seqlen']}, windows {s['windows'] or 'all'} of each evaluation split. "
             f"{bos_sentence(s['bos'], rows)} "
             "bits/param = bytes of the compressed linear layers as saved / their parameters. "
             "Compression seconds compare only within one machine.", "",
             "| row | bits/param | " + " | ".join(f"ppl {n}" for n in names) + " | compress s | measured on |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        secs = "-" if r["compress_seconds"] is None else f"{r['compress_seconds']:.1f}"
        lines.append(f"| {r['row']} | {r['bits_per_param']:.3f} | "
                     + " | ".join(f"{r['ppl'][n]:.3f}" for n in names) + f" | {secs} | {short_name(r['machine'])} |")
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """Perplexity (log) against bits/param for the first corpus: every row (left, log bits) and
    the compressed region up to 6 bits (right); the dense model is the dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, corpus = payload["rows"], next(iter(payload["rows"][0]["ppl"]))
    dense = [r for r in rows if r["method"] is None]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, low_bits in zip(axes, (False, True)):
        shown = [r for r in rows if r["method"] is not None and (not low_bits or r["bits_per_param"] <= 6)]
        for r in shown:
            ax.scatter(r["bits_per_param"], r["ppl"][corpus], s=22)
            ax.annotate(r["row"], (r["bits_per_param"], r["ppl"][corpus]), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")
        for r in dense:
            ax.axhline(r["ppl"][corpus], color="gray", linestyle="--", linewidth=1)
            ax.annotate(f"dense ({r['bits_per_param']:.0f} bits)", (ax.get_xlim()[0], r["ppl"][corpus]),
                        fontsize=7, color="gray", xytext=(2, 3), textcoords="offset points")
        ax.set_yscale("log")
        if not low_bits:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("bits / param of the compressed linear layers (as saved)")
        ax.set_ylabel(f"perplexity ({corpus}, seqlen {payload['settings']['seqlen']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title("all rows" if not low_bits else "up to 6 bits/param")
    fig.suptitle(f"{payload['settings']['model']}: quality per bit")
    return fig


def previous_rows(out_dir, settings: QualitySettings) -> list[dict]:
    """Rows of an earlier ``quality.json`` in ``out_dir`` measured under the same protocol (else none)."""
    path = Path(out_dir) / "quality.json"
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return earlier.get("rows", []) if earlier.get("settings") == settings.protocol() else []


def run_quality(s: QualitySettings, *, only: list[str] | None = None, out_dir="bench/results",
                progress: bool = True) -> dict:
    """Run every row (or those whose label contains one of ``only``, merged into an earlier result of
    the same settings); the results are rewritten after each row, in report order. ``bos`` in the
    results records the calibration windows' BOS, each row's ``bos`` its evaluation windows'."""
    all_rows = quality_rows(s)
    rows = [(label, c) for label, c in all_rows if not only or any(o in label for o in only)]
    texts = load_texts(s.ppl, None)
    tokenizer = load_model(s.model).tokenizer
    bos = bos_for(tokenizer, s.bos)
    windows = calibration_windows(tokenize(tokenizer, load_corpus(s.calib).calib), s.nsamples, s.calib_seqlen,
                                  s.seed, bos=bos, source=f"{s.calib} calibration split")
    torch.manual_seed(s.seed)
    order = {label: i for i, (label, _) in enumerate(all_rows)}
    results = {r["row"]: r for r in (previous_rows(out_dir, s) if only else [])}
    payload = {"settings": s.protocol(), "bos": bos.to_dict(), "rows": []}
    for label, config in tqdm(rows, desc="bench quality", disable=not progress, unit="row"):
        results[label] = run_row(label, config, s, texts, windows, progress)
        payload["rows"] = sorted(results.values(), key=lambda r: order.get(r["row"], len(order)))
        fig = figure(payload)
        write_results(out_dir, "quality", payload, markdown(payload), fig)
        fig.clf()
    return payload
