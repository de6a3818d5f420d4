"""What ``sparsa eval`` runs: a model's perplexity on each corpus asked and the size of its linear
layers, one call (:func:`evaluate_model`), reported as the command prints it (``--json`` fields)."""

from collections.abc import Callable

import torch
from torch import nn

from sparsa.data.tokens import bos_for
from sparsa.evaluate.texts import load_texts, perplexities
from sparsa.nn import linear_footprint
from sparsa.nn.models import load_model


def evaluate_model(model_spec: str, *, ppl: str | None = None, text_file: str | None = None, seqlen: int = 2048,
                   windows: int | None = None, bos: str = "auto", dtype: torch.dtype | None = None,
                   device: str = "cpu", prepare: Callable[[nn.Module], dict] | None = None,
                   progress: bool = True) -> dict:
    """Perplexity of ``model_spec`` on the corpora ``ppl`` (comma-separated; default wiki) and on
    ``text_file`` (whole), in windows of ``seqlen`` tokens (at most ``windows`` per text), BOS placed by
    ``bos``; plus the bytes and bits per parameter of its linear layers (of a ``.gguf`` file: as the
    file stores them, though it runs dequantized to fp32). ``prepare`` is called on
    the loaded model first (e.g. to swap its attention) and what it returns is reported too."""
    texts = load_texts(ppl, text_file)
    lm = load_model(model_spec, dtype=dtype)
    lm.model.to(device)
    extra = prepare(lm.model) if prepare is not None else {}
    rule = bos_for(lm.tokenizer, bos)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=seqlen, max_windows=windows, bos=rule,
                           device=device, progress=progress)
    params, nbytes = lm.stored or linear_footprint(lm.model)
    return {"model": model_spec, "ppl": {k: r.ppl for k, r in results.items()},
            "bits_per_param": 8 * nbytes / params, "bytes": nbytes, "params": params, "seqlen": seqlen,
            "bos": rule.to_dict(), "windows": {k: r.windows for k, r in results.items()},
            "predicted_tokens": {k: r.predicted_tokens for k, r in results.items()},
            "seconds": {k: round(r.seconds, 3) for k, r in results.items()}, **extra}
