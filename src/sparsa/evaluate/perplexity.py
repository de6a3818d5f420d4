"""Perplexity by the GPTQ protocol: non-overlapping windows, NLL summed over every predicted token."""

import math
import time
from collections.abc import Iterator
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
def window_logits(model: nn.Module, windows: torch.Tensor, *, device: str = "cpu", progress: bool = True,
                  desc: str = "ppl") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(targets, logits)`` of each window in turn: its tokens 1..seqlen-1 ([seqlen - 1] int64) and
    the fp32 logits predicting them ([seqlen - 1, vocab]).

    Args:
        model: Hugging Face causal LM (``model(ids).logits``: [1, seqlen, vocab]).
        windows: [W, seqlen] int64 token ids, evaluated one window at a time; position 0 (BOS when
            windows open with one) is never a target.
        device: where the windows go (the model must already be there).

    Compressed layers decode once for the whole run (``decoded_weights``): this measures
    quality, not kernel speed.
    """
    with decoded_weights(model):
        for window in tqdm(windows, desc=desc, disable=not progress, unit="window"):
            ids = window.to(device)[None]  # [1, seqlen]
            yield ids[0, 1:], model(ids).logits[0, :-1].float()


def perplexity(model: nn.Module, windows: torch.Tensor, *, device: str = "cpu", progress: bool = True,
               desc: str = "ppl") -> PerplexityResult:
    """Perplexity of a causal LM over token windows (arguments as :func:`window_logits`)."""
    start = time.perf_counter()
    nll_sum, predicted = 0.0, 0
    for targets, logits in window_logits(model, windows, device=device, progress=progress, desc=desc):
        nll_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        predicted += targets.numel()
    return PerplexityResult(ppl=math.exp(nll_sum / predicted), nll_sum=nll_sum, predicted_tokens=predicted,
                            windows=windows.shape[0], seqlen=windows.shape[1],
                            seconds=time.perf_counter() - start)
