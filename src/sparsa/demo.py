"""The main job, end to end: measure the embedded model, compress it, save, reload, measure again."""

import tempfile
import time
from pathlib import Path

from sparsa.bench.results import machine, write_results
from sparsa.compress import SpQRConfig, compress_
from sparsa.compress.pipeline import calibration_for
from sparsa.data.tokens import bos_for
from sparsa.evaluate import load_texts, perplexities
from sparsa.nn import linear_footprint
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.models import DEFAULT_MODEL, load_model


def demo_config(nsamples: int, calib_seqlen: int) -> SpQRConfig:
    """The best method sparsa has: SpQR at its 3-bit recipe, with a demo-sized calibration."""
    return SpQRConfig(bits=3, nsamples=nsamples, seqlen=calib_seqlen)


def measure(spec: str, texts: dict, seqlen: int, windows: int, bos: str, progress: bool) -> dict:
    """Load ``spec`` and return its perplexities (``--bos`` protocol ``bos``) and linear-layer size."""
    lm = load_model(spec)
    rule = bos_for(lm.tokenizer, bos)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=seqlen, max_windows=windows, bos=rule,
                           progress=progress)
    params, nbytes = linear_footprint(lm.model)
    return {"ppl": {k: r.ppl for k, r in results.items()}, "bytes": nbytes, "params": params,
            "bits_per_param": 8 * nbytes / params, "bos": rule.to_dict()}


def run_demo(*, ppl: str = "wiki,shakespeare", seqlen: int = 512, windows: int = 16, nsamples: int = 16,
             calib_seqlen: int = 512, bos: str = "auto", out_dir: str | None = None,
             progress: bool = True) -> list[dict]:
    """Rows of the demo table: the dense model, then the compressed checkpoint reloaded from disk.

    ``seconds`` is the time to compress and save (None for the dense model); ``bos`` is the
    ``--bos`` protocol of the calibration and evaluation windows, which each row records. With
    ``out_dir``, the rows, the settings and the machine are also written to ``out_dir/demo.{json,md}``
    (``make demo`` writes ``bench/results``, from which the README's demo table is rendered).
    """
    settings = {"ppl": ppl, "seqlen": seqlen, "windows": windows, "nsamples": nsamples,
                "calib_seqlen": calib_seqlen, "bos": bos}
    rows = demo_rows(**settings, progress=progress)
    if out_dir is not None:
        payload = {"machine": machine("cpu"), "settings": settings, "rows": rows}
        write_results(out_dir, "demo", payload, markdown(payload))
    return rows


def demo_rows(*, ppl: str, seqlen: int, windows: int, nsamples: int, calib_seqlen: int, bos: str,
              progress: bool) -> list[dict]:
    """The dense row and the reloaded compressed row (see :func:`run_demo`)."""
    config = demo_config(nsamples, calib_seqlen)
    texts = load_texts(ppl, None)
    dense = {"model": f"{DEFAULT_MODEL} (dense fp32)", "seconds": None,
             **measure(DEFAULT_MODEL, texts, seqlen, windows, bos, progress)}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "demo-checkpoint"
        lm = load_model(DEFAULT_MODEL)
        calibration = calibration_for(config, lm.tokenizer, 0, bos_for(lm.tokenizer, bos))
        start = time.perf_counter()
        compress_(lm.model, config, calibration=calibration, progress=progress)
        save_checkpoint(lm.model, lm.tokenizer, target, method=config.to_dict())
        seconds = time.perf_counter() - start
        label = f"spqr {config.bits}-bit, tau {config.outlier_threshold} (reloaded)"
        compressed = {"model": label, "seconds": seconds, **measure(str(target), texts, seqlen, windows, bos, progress)}
    return [dense, compressed]


def markdown(payload: dict) -> str:
    """The demo table as markdown, with its date, machine and protocol."""
    m, s, rows = payload["machine"], payload["settings"], payload["rows"]
    names = list(rows[0]["ppl"])
    lines = [f"# sparsa demo ({m['date']}, {m['cores']}-core {m['cpu']} CPU, torch {m['torch']})", "",
             f"{s['windows']} evaluation windows x {s['seqlen']} tokens per corpus; calibration {s['nsamples']} x "
             f"{s['calib_seqlen']} tokens; --bos {s['bos']}.", "",
             "| model | " + " | ".join(f"ppl {n}" for n in names) + " | bytes | bits/param | compress s |",
             "|---|" + "---|" * len(names) + "---|---|---|"]
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['ppl'][n]:.3f}" for n in names)
                     + f" | {r['bytes']:,} | {r['bits_per_param']:.3f} | {seconds} |")
    return "\n".join(lines) + "\n"
