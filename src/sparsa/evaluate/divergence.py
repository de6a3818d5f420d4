"""KL divergence of a model's next-token distributions from a reference model's, on the windows
perplexity is measured on: what llama.cpp's ``llama-perplexity --kl-divergence`` reports, by the
GPTQ window protocol (every token 1..seqlen-1 of every window is a position)."""

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sparsa.evaluate.perplexity import window_logits


@dataclass
class DivergenceResult:
    """A model against the reference over ``positions`` predicted tokens.

    Attributes:
        ppl: the model's perplexity (``exp`` of its mean NLL of the targets).
        kld_mean: mean over positions of ``KL(P_ref || P_model)``, in nats.
        kld_p99: its 99th percentile (nats).
        same_top: share of positions whose most likely token is the reference's.
    """

    ppl: float
    kld_mean: float
    kld_p99: float
    same_top: float
    positions: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def reference_logprobs(model: nn.Module, windows: torch.Tensor, *, device: str = "cpu",
                       progress: bool = True) -> list[torch.Tensor]:
    """The reference's log-probabilities of every window, on the CPU: ``W`` tensors of
    [seqlen - 1, vocab] fp32 (``W * (seqlen - 1) * vocab * 4`` bytes: 3.2 GB for 32 x 512 x 49152)."""
    return [torch.log_softmax(logits, -1).cpu()
            for _, logits in window_logits(model, windows, device=device, progress=progress, desc="reference")]


def divergence(model: nn.Module, windows: torch.Tensor, reference: list[torch.Tensor], *, device: str = "cpu",
               progress: bool = True, desc: str = "kld") -> DivergenceResult:
    """Perplexity and KL divergence from ``reference`` (:func:`reference_logprobs` of the same
    ``windows``) of ``model`` ([W, seqlen] int64 windows, as :func:`~sparsa.evaluate.perplexity.window_logits`)."""
    if len(reference) != windows.shape[0]:
        raise ValueError(f"reference has {len(reference)} windows, windows {windows.shape[0]}")
    start = time.perf_counter()
    nll_sum, klds, same = 0.0, [], 0
    for ref, (targets, logits) in zip(reference, window_logits(model, windows, device=device, progress=progress,
                                                                 desc=desc)):
        logq = torch.log_softmax(logits, -1).cpu()  # [seqlen - 1, vocab]
        nll_sum -= logq.gather(1, targets.cpu()[:, None]).sum().item()
        klds.append((ref.exp() * (ref - logq)).sum(-1))
        same += (ref.argmax(-1) == logq.argmax(-1)).sum().item()
    kld = torch.cat(klds).double()
    return DivergenceResult(ppl=math.exp(nll_sum / kld.numel()), kld_mean=kld.mean().item(),
                            kld_p99=torch.quantile(kld, 0.99).item(), same_top=same / kld.numel(),
                            positions=kld.numel(), seconds=time.perf_counter() - start)
