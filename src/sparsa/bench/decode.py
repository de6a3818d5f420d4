"""``sparsa bench decode``: greedy decode tokens/s of SmolLM2, dense against compressed, in one process.

Every variant runs the same lean decode loop (:mod:`sparsa.nn.lean_decode`: static KV cache,
the model's own modules), from the same prompt, so the ratios compare the weight paths only.
Compressed variants also decode through the reference path (weights decoded once, dense
matmuls): their greedy tokens must match it, except where the reference's top-2 logit gap is
below ``NEAR_TIE`` (reported, not hidden).
"""

import copy
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from sparsa.bench.results import batch_bars, machine, write_results
from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.data import calibration_windows, load_corpus, tokenize
from sparsa.nn.lean_decode import greedy_decode
from sparsa.nn.models import load_model
from sparsa.nn.sparse_linear import decoded_weights
from sparsa.nn.surgery import all_linears, decoder_linears

NEAR_TIE = 1e-3
VARIANTS = ("dense fp32", "dense bf16", "spqr-3", "quant-4", "bitmap-50%", "block-70%", "torchao int8 weight-only")


@dataclass(frozen=True)
class DecodeSettings:
    """Model, batches, prompt and generation lengths, variants, and SpQR's calibration."""

    model: str = "smollm2-135m"
    batches: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 32
    new_tokens: int = 64
    match_tokens: int = 32
    variants: tuple[str, ...] = VARIANTS
    nsamples: int = 16
    calib_seqlen: int = 512
    seed: int = 0

    @classmethod
    def quick(cls) -> "DecodeSettings":
        return cls(batches=(1,), new_tokens=33, variants=("dense fp32", "spqr-3"))


def compressed(model, name: str, s: DecodeSettings, calibration):
    """``model`` (a private copy) turned into variant ``name``; a string says why it cannot run."""
    if name == "dense fp32":
        return model
    if name == "dense bf16":
        return model.to(torch.bfloat16)
    if name == "torchao int8 weight-only":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as e:
            return f"torchao is not installed ({e.name})"
        quantize_(model, Int8WeightOnlyConfig())
        return model
    config = {"spqr-3": SpQRConfig(bits=3, nsamples=s.nsamples, seqlen=s.calib_seqlen),
              "quant-4": RTNConfig(bits=4, group_size=32),
              "bitmap-50%": MagnitudeConfig(sparsity=0.5),
              "block-70%": MagnitudeConfig(sparsity=0.7, pattern="block:1x16")}[name]
    quantized = name in ("spqr-3", "quant-4")  # these take the output head too; pruning it would wreck the model
    compress_(model, config, calibration=calibration if config.needs_calibration else None, progress=False,
              filter_fn=all_linears if quantized else decoder_linears)
    return model


def first_mismatch(fast: torch.Tensor, reference: torch.Tensor, gaps: torch.Tensor, n: int) -> dict:
    """Compare the first ``n`` greedy tokens of each sequence; a divergence at a near-tie is allowed."""
    fast, reference, gaps = fast[:, :n], reference[:, :n], gaps[:, :n]
    differ = (fast != reference).any(dim=0).nonzero()
    if differ.numel() == 0:
        return {"match": True, "compared": n, "first_difference": None, "near_tie": False}
    step = int(differ[0])
    gap = float(gaps[:, step].min())
    return {"match": gap < NEAR_TIE, "compared": n, "first_difference": step, "near_tie": gap < NEAR_TIE,
            "reference_top2_gap": gap}


def run_variant(name: str, dense, s: DecodeSettings, prompt: torch.Tensor, calibration) -> dict:
    """Build one variant and time it at every batch size."""
    model = compressed(copy.deepcopy(dense), name, s, calibration)
    if isinstance(model, str):
        return {"variant": name, "skipped": model}
    row = {"variant": name, "tokens_per_s": {}, "ms_per_step": {}}
    for batch in s.batches:
        ids = prompt[:1].expand(batch, -1).contiguous()
        greedy_decode(model, ids, 2)  # warm-up: kernels compile, caches fill
        out = greedy_decode(model, ids, s.new_tokens)
        row["tokens_per_s"][str(batch)] = out.tokens_per_s
        row["ms_per_step"][str(batch)] = 1e3 * out.decode_seconds / (s.new_tokens - 1)
        if batch == s.batches[0]:
            row["tokens"] = out.tokens[0, : s.match_tokens].tolist()
            if name.startswith("dense"):
                continue
            with decoded_weights(model):
                ref = greedy_decode(model, ids, s.match_tokens)
            row["reference_match"] = first_mismatch(out.tokens, ref.tokens, ref.top2_gap, s.match_tokens)
    return row


def markdown(payload: dict) -> str:
    m, s = payload["machine"], payload["settings"]
    batches = [str(b) for b in s["batches"]]
    lines = ["# decode: greedy tokens/s of SmolLM2-135M, one lean loop for every variant", "",
             f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}); prompt "
             f"{s['prompt_tokens']} tokens, {s['new_tokens']} new tokens, the prefill excluded. `x fp32`: tokens/s "
             "over dense fp32 at the same batch. `match`: the first "
             f"{s['match_tokens']} greedy tokens against the reference path (decode the weights, dense matmul).", "",
             "| variant | " + " | ".join(f"tokens/s (batch {b}) | x fp32" for b in batches) + " | match |",
             "|---|" + "---|---|" * len(batches) + "---|"]
    dense = next((r for r in payload["rows"] if r["variant"] == "dense fp32" and "skipped" not in r), None)
    for r in payload["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | " + " | ".join("n/a | n/a" for _ in batches) + f" | {r['skipped']} |")
            continue
        cells = []
        for b in batches:
            tps = r["tokens_per_s"][b]
            ratio = f"{tps / dense['tokens_per_s'][b]:.2f}x" if dense else "n/a"
            cells.append(f"{tps:.1f} | {ratio}")
        match = r.get("reference_match")
        verdict = "-" if match is None else ("yes" if match["first_difference"] is None else
                                             f"near tie at step {match['first_difference']}" if match["near_tie"]
                                             else f"NO: step {match['first_difference']}")
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """Tokens/s per variant and batch (log scale)."""
    return batch_bars(payload, "tokens_per_s", "tokens / s", f"{payload['settings']['model']}: greedy decode")


def run_decode(s: DecodeSettings, *, out_dir="bench/results", name: str = "decode", progress: bool = True) -> dict:
    """Time every variant and write ``<name>.{json,md,png}``."""
    lm = load_model(s.model)
    lm.model.eval()
    corpus = load_corpus("wiki")
    prompt = tokenize(lm.tokenizer, corpus.eval[: 40 * s.prompt_tokens])[None, : s.prompt_tokens]
    calibration = None
    if "spqr-3" in s.variants:
        calibration = calibration_windows(tokenize(lm.tokenizer, corpus.calib), s.nsamples, s.calib_seqlen, s.seed,
                                          source="wiki calibration split")
    rows = [run_variant(v, lm.model, s, prompt, calibration) for v in tqdm(s.variants, desc="bench decode",
                                                                             disable=not progress)]
    payload = {"settings": asdict(s), "machine": machine("cpu"), "rows": rows}
    fig = figure(payload)
    write_results(out_dir, name, payload, markdown(payload), fig)
    return payload
