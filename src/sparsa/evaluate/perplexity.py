"""Perplexity by the GPTQ protocol: non-overlapping windows, NLL summed over every predicted token."""

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsa.nn.sparse_linear import decoded_weights


@dataclass
class PerplexityResult:
    """``ppl = exp(nll_sum / predicted_tokens)``; each window predicts its tokens 1..seqlen-1
    (``seqlen - 1`` of them): token 0, a BOS under ``--bos auto``, is context only, never a target."""

    ppl: float
    nll_sum: float
    predicted_tokens: int
    windows: int
    seqlen: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, device: str = "cpu", progress: bool = True,
               desc: str = "ppl") -> PerplexityResult:
    """Perplexity of a causal LM over token windows.

    Args:
        model: Hugging Face causal LM (``model(ids).logits``: [1, seqlen, vocab]).
        windows: [W, seqlen] int64 token ids, evaluated one window at a time; position 0 (BOS when
            windows open with one) is never scored.
        device: where the windows go (the model must already be there).

    Compressed layers decode once for the whole run (``decoded_weights``): this measures
    quality, not kernel speed.
    """
    start = time.perf_counter()
    nll_sum, predicted = 0.0, 0
    with decoded_weights(model):
        for window in tqdm(windows, desc=desc, disable=not progress, unit="window"):
            ids = window.to(device)[None]  # [1, seqlen]
            logits = model(ids).logits[0, :-1].float()  # [seqlen - 1, vocab]
            nll_sum += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            predicted += ids.shape[1] - 1
    return PerplexityResult(ppl=math.exp(nll_sum / predicted), nll_sum=nll_sum, predicted_tokens=predicted,
                            windows=windows.shape[0], seqlen=windows.shape[1],
                            seconds=time.perf_counter() - start)
