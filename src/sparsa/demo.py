"""The main job, end to end: measure the embedded model, compress it, save, reload, measure again."""

import tempfile
import time
from pathlib import Path

from sparsa.compress import SpQRConfig, compress_
from sparsa.data import calibration_windows, load_corpus, tokenize
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
             calib_seqlen: int = 512, bos: str = "auto", progress: bool = True) -> list[dict]:
    """Rows of the demo table: the dense model, then the compressed checkpoint reloaded from disk.

    ``seconds`` is the time to compress and save (None for the dense model); ``bos`` is the
    ``--bos`` protocol of the calibration and evaluation windows, which each row records.
    """
    config = demo_config(nsamples, calib_seqlen)
    texts = load_texts(ppl, None)
    dense = {"model": f"{DEFAULT_MODEL} (dense fp32)", "seconds": None,
             **measure(DEFAULT_MODEL, texts, seqlen, windows, bos, progress)}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "demo-checkpoint"
        lm = load_model(DEFAULT_MODEL)
        calibration = calibration_windows(tokenize(lm.tokenizer, load_corpus(config.calib).calib), config.nsamples,
                                          config.seqlen, seed=0, bos=bos_for(lm.tokenizer, bos),
                                          source=f"{config.calib} calibration split")
        start = time.perf_counter()
        compress_(lm.model, config, calibration=calibration, progress=progress)
        save_checkpoint(lm.model, lm.tokenizer, target, method=config.to_dict())
        seconds = time.perf_counter() - start
        label = f"spqr {config.bits}-bit, tau {config.outlier_threshold} (reloaded)"
        compressed = {"model": label, "seconds": seconds, **measure(str(target), texts, seqlen, windows, bos, progress)}
    return [dense, compressed]
