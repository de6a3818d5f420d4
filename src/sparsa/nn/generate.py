"""Greedy generation from a prompt, timed: what ``sparsa generate`` runs.

A Llama model decodes through the lean loop (:func:`sparsa.nn.lean_decode.greedy_decode`: a
static cache and the dispatched kernels, the compiled step on the CPU), after an untimed
two-token warm-up that compiles the kernels; any other model, or one whose attention a
``prepare`` hook replaced, through Hugging Face ``generate``. The text stops at the first
end-of-sequence token.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsa.errors import SparsaError
from sparsa.nn.lean_decode import greedy_decode
from sparsa.nn.models import load_model


@dataclass
class GenerateSummary:
    """A generation and its timings.

    Attributes:
        text: the generated text (up to the first end-of-sequence token).
        new_tokens: tokens generated (end-of-sequence included).
        tokens_per_s: new tokens over the whole generation's seconds, prefill included.
        warmup_s, prefill_s: the lean loop's untimed warm-up and its prefill (None otherwise).
        decode_tokens_per_s: the lean loop's tokens/s over the steps after the prefill (None with one token).
        extra: what the ``prepare`` hook reported (e.g. the attention used), merged into ``to_dict``.
    """

    text: str
    new_tokens: int
    tokens_per_s: float
    warmup_s: float | None = None
    prefill_s: float | None = None
    decode_tokens_per_s: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        timing = {k: v for k in ("warmup_s", "prefill_s", "decode_tokens_per_s") if (v := getattr(self, k)) is not None}
        return {"text": self.text, "new_tokens": self.new_tokens, "tokens_per_s": self.tokens_per_s, **timing,
                **self.extra}

    def brief(self) -> str:
        return f"{self.text}\n\n[{self.new_tokens} tokens, {self.tokens_per_s:.1f} tokens/s]"


def check_context(prompt_tokens: int, new_tokens: int, config) -> None:
    """SparsaError unless the prompt has tokens and prompt + new tokens fit the model's context."""
    if prompt_tokens == 0:
        raise SparsaError("--prompt: the text tokenizes to no tokens; give words the model's tokenizer knows")
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt_tokens + new_tokens > limit:
        fix = (f"lower --max-new-tokens to {limit - prompt_tokens} or shorten the prompt" if prompt_tokens < limit
               else "shorten the prompt")
        raise SparsaError(f"--prompt of {prompt_tokens} tokens + --max-new-tokens {new_tokens} = "
                          f"{prompt_tokens + new_tokens} tokens exceeds the model's context of {limit} tokens; {fix}")


def generate(model_spec: str, prompt: str, *, max_new_tokens: int = 64, device: str = "cpu",
             dtype: torch.dtype | None = None,
             prepare: Callable[[nn.Module], dict] | None = None) -> GenerateSummary:
    """Greedily continue ``prompt`` with the model ``model_spec`` (any spec :func:`load_model` takes).

    Args:
        max_new_tokens: tokens to generate.
        device, dtype: where the model runs, and a dtype to cast a dense model to.
        prepare: called on the loaded model before generating (e.g. to swap its attention); what it
            returns is reported in ``extra``, and a non-empty report sends generation through
            Hugging Face ``generate``.
    """
    if not prompt:
        raise SparsaError("--prompt '': empty; give the text to continue, e.g. --prompt 'Once upon a time'")
    lm = load_model(model_spec, dtype=dtype)
    lm.model.to(device)
    extra = prepare(lm.model) if prepare is not None else {}
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    check_context(ids.shape[1], max_new_tokens, lm.model.config)
    timing = {}
    if lm.model.config.model_type == "llama" and not extra:  # the lean loop: static cache, the dispatched kernels
        start = time.perf_counter()
        greedy_decode(lm.model, ids[:, :2], 2)  # compiles the kernels (once per process), untimed
        timing["warmup_s"] = round(time.perf_counter() - start, 3)
        out = greedy_decode(lm.model, ids, max_new_tokens)
        new_ids, seconds = out.tokens[0], out.prefill_seconds + out.decode_seconds
        timing["prefill_s"] = round(out.prefill_seconds, 4)
        if max_new_tokens > 1:
            timing["decode_tokens_per_s"] = out.tokens_per_s
    else:
        start = time.perf_counter()
        with torch.no_grad():
            new_ids = lm.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1]:]
        seconds = time.perf_counter() - start
    eos = lm.tokenizer.eos_token_id
    ends = (new_ids == eos).nonzero() if eos is not None else new_ids.new_zeros(0, 1)
    text_ids = new_ids[: int(ends[0])] if ends.numel() else new_ids  # the text stops at end-of-sequence
    return GenerateSummary(lm.tokenizer.decode(text_ids, skip_special_tokens=True), len(new_ids),
                           len(new_ids) / seconds, **timing, extra=extra)
