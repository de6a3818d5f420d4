"""``sparsa bench decode``: greedy decode tokens/s of SmolLM2, dense against compressed, in one process.

Every variant runs the same lean decode loop (:mod:`sparsa.nn.lean_decode`: static KV cache,
the model's own modules), from the same prompt, so the ratios compare the weight paths only.
All variants are built first; then ``rounds`` rounds each time every variant at every batch
once, the variants in a rotated order each round (the first variant of a process runs slower),
and each figure is the median over rounds. The kernels each variant ran come from the
dispatcher (:func:`sparsa.kernels.recorded_kernels`); a compressed variant any of whose layers
fell back to the reference kernel fails the run instead of reporting under a kernel's name.
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
from sparsa.data.tokens import bos_for
from sparsa.errors import SparsaError
from sparsa.kernels import linear_reference, kernel_name, recorded_kernels
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
    rounds: int = 5
    bos: str = "auto"  # --bos protocol of the calibration windows

    @classmethod
    def quick(cls) -> "DecodeSettings":
        return cls(batches=(1,), new_tokens=33, variants=("dense fp32", "spqr-3"), rounds=3)


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


def ran_kernels(name: str, model, ids: torch.Tensor) -> dict[str, int]:
    """Warm ``model`` up on ``ids`` (kernels compile, caches fill) and return the kernels the
    dispatcher chose, ``{"format: kernel": layers}``; :class:`SparsaError` if any is the reference."""
    with recorded_kernels() as counts:
        greedy_decode(model, ids, 2)
    fallback = {fmt: n for (fmt, kernel), n in counts.items() if kernel == kernel_name(linear_reference)}
    if fallback and not name.startswith(("dense", "torchao")):
        raise SparsaError(f"bench decode: variant {name}: " + ", ".join(f"{n} {fmt} layer(s)" for fmt, n in
                                                                       fallback.items())
                          + " fell back to the reference kernel (no fast kernel for them on the CPU); "
                            "nothing is reported under a kernel's name")
    return {f"{fmt}: {kernel}": n for (fmt, kernel), n in sorted(counts.items())}


def time_variant(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(tokens/s, ms per decode step) of one greedy decode of ``new_tokens`` after ``ids``."""
    out = greedy_decode(model, ids, new_tokens)
    return out.tokens_per_s, 1e3 * out.decode_seconds / (new_tokens - 1)


def reference_check(name: str, model, ids: torch.Tensor, n: int) -> dict:
    """The first ``n`` greedy tokens of ``model``, and for compressed variants their match with the
    reference path."""
    out = greedy_decode(model, ids, n)
    row = {"tokens": out.tokens[0].tolist()}
    if not name.startswith("dense"):
        with decoded_weights(model):
            ref = greedy_decode(model, ids, n)
        row["reference_match"] = first_mismatch(out.tokens, ref.tokens, ref.top2_gap, n)
    return row


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_rounds(models: dict, s: DecodeSettings, prompt: torch.Tensor, progress: bool) -> dict[str, dict]:
    """Round-robin timing: per variant, per batch, every round's (tokens/s, ms/step)."""
    names = list(models)
    samples = {name: {str(b): [] for b in s.batches} for name in names}
    for r in tqdm(range(s.rounds), desc="bench decode rounds", disable=not progress):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for batch in s.batches:
                samples[name][str(batch)].append(time_variant(models[name], batch_of(prompt, batch), s.new_tokens))
    return samples


def batch_of(prompt: torch.Tensor, batch: int) -> torch.Tensor:
    return prompt[:1].expand(batch, -1).contiguous()


def table_cells(payload: dict) -> tuple[list[str], list[list[str]]]:
    """The decode table's header and one row of cells per variant: tokens/s and its ratio over dense
    fp32 at each batch, the reference-match verdict, and the kernels the dispatcher ran."""
    batches = [str(b) for b in payload["settings"]["batches"]]
    header = ["variant", *(c for b in batches for c in (f"tokens/s (batch {b})", "x fp32")), "match", "kernel"]
    dense = next((r for r in payload["rows"] if r["variant"] == "dense fp32" and "skipped" not in r), None)
    rows = []
    for r in payload["rows"]:
        if "skipped" in r:
            rows.append([r["variant"], *("n/a" for _ in range(2 * len(batches))), r["skipped"], ""])
            continue
        cells = []
        for b in batches:
            tps = r["tokens_per_s"][b]
            cells += [f"{tps:.1f}", f"{tps / dense['tokens_per_s'][b]:.2f}x" if dense else "n/a"]
        match = r.get("reference_match")
        verdict = "-" if match is None else ("yes" if match["first_difference"] is None else
                                             f"near tie at step {match['first_difference']}" if match["near_tie"]
                                             else f"NO: step {match['first_difference']}")
        rows.append([r["variant"], *cells, verdict, kernel_label(r)])
    return header, rows


def settings_sentence(payload: dict) -> str:
    """Prompt, generation length, rounds and what each column means."""
    s = payload["settings"]
    return (f"Prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens, the prefill excluded; the median of "
            f"{s['rounds']} round-robin rounds. `x fp32`: tokens/s over dense fp32 at the same batch. `match`: the "
            f"first {s['match_tokens']} greedy tokens against the reference path (decode the weights, dense "
            "matmul). `kernel`: what the dispatcher ran for the variant's compressed layers.")


def markdown(payload: dict) -> str:
    m = payload["machine"]
    header, rows = table_cells(payload)
    lines = ["# decode: greedy tokens/s of SmolLM2-135M, one lean loop for every variant", "",
             f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}). "
             + settings_sentence(payload), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def kernel_label(row: dict) -> str:
    """The kernels of a variant's first batch, without module paths; dense layers run nn.Linear."""
    kernels = next(iter(row["kernels"].values()))
    return ", ".join(k.rsplit(".", 1)[-1] for k in kernels) or "torch nn.Linear"


def figure(payload: dict):
    """Tokens/s per variant and batch (log scale)."""
    return batch_bars(payload, "tokens_per_s", "tokens / s", f"{payload['settings']['model']}: greedy decode")


def run_decode(s: DecodeSettings, *, out_dir="bench/results", name: str = "decode", progress: bool = True) -> dict:
    """Build every variant, time them in rounds, and write ``<name>.{json,md,png}``."""
    lm = load_model(s.model)
    lm.model.eval()
    corpus = load_corpus("wiki")
    prompt = tokenize(lm.tokenizer, corpus.eval[: 40 * s.prompt_tokens])[None, : s.prompt_tokens]
    calibration = None
    if "spqr-3" in s.variants:
        calibration = calibration_windows(tokenize(lm.tokenizer, corpus.calib), s.nsamples, s.calib_seqlen, s.seed,
                                          bos=bos_for(lm.tokenizer, s.bos), source="wiki calibration split")
    rows, models = [], {}
    for variant in tqdm(s.variants, desc="bench decode: build", disable=not progress):
        model = compressed(copy.deepcopy(lm.model), variant, s, calibration)
        if isinstance(model, str):
            rows.append({"variant": variant, "skipped": model})
            continue
        rows.append({"variant": variant, "kernels": {str(b): ran_kernels(variant, model, batch_of(prompt, b))
                                                     for b in s.batches}})
        models[variant] = model
    samples = run_rounds(models, s, prompt, progress)
    for row in rows:
        if "skipped" in row:
            continue
        runs = samples[row["variant"]]
        row["tokens_per_s"] = {b: median([t for t, _ in runs[b]]) for b in runs}
        row["ms_per_step"] = {b: median([ms for _, ms in runs[b]]) for b in runs}
        row["tokens_per_s_rounds"] = {b: [t for t, _ in runs[b]] for b in runs}
        row.update(reference_check(row["variant"], models[row["variant"]], batch_of(prompt, s.batches[0]),
                                   s.match_tokens))
    payload = {"settings": asdict(s), "machine": machine("cpu"), "rows": rows}
    if calibration is not None:
        payload["bos"] = bos_for(lm.tokenizer, s.bos).to_dict()
    fig = figure(payload)
    write_results(out_dir, name, payload, markdown(payload), fig)
    return payload
