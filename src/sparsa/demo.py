"""The main job, end to end: measure the embedded model, compress it, save, reload, measure again."""

import tempfile
import time
from pathlib import Path

from sparsa.compress import RTNConfig, compress_
from sparsa.evaluate import load_texts, perplexities
from sparsa.nn import linear_footprint
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.models import DEFAULT_MODEL, load_model

# The best method sparsa has so far; the SpQR issue switches this.
DEMO_CONFIG = RTNConfig(bits=4, group_size=32)


def measure(spec: str, texts: dict, seqlen: int, windows: int, progress: bool) -> dict:
    """Load ``spec`` and return its perplexities and linear-layer size."""
    lm = load_model(spec)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=seqlen, max_windows=windows, progress=progress)
    params, nbytes = linear_footprint(lm.model)
    return {"ppl": {k: r.ppl for k, r in results.items()}, "bytes": nbytes, "params": params,
            "bits_per_param": 8 * nbytes / params}


def run_demo(*, ppl: str = "wiki,shakespeare", seqlen: int = 512, windows: int = 16,
             progress: bool = True) -> list[dict]:
    """Rows of the demo table: the dense model, then the compressed checkpoint reloaded from disk.

    ``seconds`` is the time to compress and save (None for the dense model).
    """
    texts = load_texts(ppl, None)
    dense = {"model": f"{DEFAULT_MODEL} (dense fp32)", "seconds": None,
             **measure(DEFAULT_MODEL, texts, seqlen, windows, progress)}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "demo-checkpoint"
        lm = load_model(DEFAULT_MODEL)
        start = time.perf_counter()
        compress_(lm.model, DEMO_CONFIG, progress=progress)
        save_checkpoint(lm.model, lm.tokenizer, target, method=DEMO_CONFIG.to_dict())
        seconds = time.perf_counter() - start
        label = f"{DEMO_CONFIG.method} {DEMO_CONFIG.bits}-bit g{DEMO_CONFIG.group_size} (reloaded)"
        compressed = {"model": label, "seconds": seconds, **measure(str(target), texts, seqlen, windows, progress)}
    return [dense, compressed]
