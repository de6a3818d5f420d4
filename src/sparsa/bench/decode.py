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
below ``NEAR_TIE`` (reported, not hidden). A variant that diverges elsewhere decodes once more
with fp32 activations (:func:`~sparsa.kernels.cpu.spqr.fp32_path`): the int8-activation kernels
(as llama.cpp's Q8 activations) move logits by a few hundredths, enough to flip a close pair, and
the second check says whether that, or the weights' kernel, is the cause.

Each (batch, threads) cell (:meth:`DecodeSettings.cells`) has the key ``b<batch>t<threads>``. llama.cpp
(:mod:`sparsa.bench.llama_cpp`) runs in the same rounds at batch 1, one ``llama-bench`` process
per type and thread count per round, on GGUF files of the same weights; without its tools its
rows say why. Prompt tokens/s (batch 1) come from the same runs: sparsa's prefill of the
prompt, llama.cpp's ``-p`` test; a longer prompt (``long_prompt_tokens``) is prefilled once more
per round at the first thread count.

The byte floor: the bytes one decode step reads (the compiled step's weight arrays, each once,
and the KV cache at the timed steps' mean position; llama.cpp: its GGUF file and an f16 cache)
over the read bandwidth measured in the same process (:mod:`sparsa.bench.bandwidth`), at batch 1
and the first thread count; ``x floor`` is tokens/s over that floor's.
"""

import contextlib
import copy
from dataclasses import asdict, dataclass

import numba
import torch
from tqdm.auto import tqdm

from sparsa.bench import llama_cpp
from sparsa.bench.bandwidth import read_bandwidth
from sparsa.bench.results import batch_bars, machine, write_results
from sparsa.bench.timing import median
from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.compress.pipeline import calibration_for
from sparsa.data import load_corpus, tokenize
from sparsa.data.tokens import bos_for
from sparsa.errors import SparsaError
from sparsa.kernels import linear_reference, kernel_name, recorded_kernels
from sparsa.kernels.cpu.spqr import fp32_path
from sparsa.nn.lean_decode import LeanLlama, greedy_decode
from sparsa.nn.models import load_model
from sparsa.nn.sparse_linear import decoded_weights
from sparsa.nn.surgery import all_linears, decoder_linears

NEAR_TIE = 1e-3
VARIANTS = ("dense fp32", "dense bf16", "spqr-3", "quant-4", "quant-4 sym", "bitmap-50%", "nm-2:4", "block-70%",
            "torchao int8 weight-only")


@dataclass(frozen=True)
class DecodeSettings:
    """Model, batches, prompt and generation lengths, variants, and SpQR's calibration."""

    model: str = "smollm2-135m"
    batches: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 32
    long_prompt_tokens: int = 512  # prefilled once more per round (batch 1, first thread count); 0: not timed
    new_tokens: int = 64
    match_tokens: int = 32
    variants: tuple[str, ...] = VARIANTS
    nsamples: int = 16
    calib_seqlen: int = 512
    seed: int = 0
    rounds: int = 5
    bos: str = "auto"  # --bos protocol of the calibration windows
    threads: tuple[int, ...] = (2, 1)  # every batch at the first; batch 1 at the others too
    llama_cpp: tuple[str, ...] = llama_cpp.TYPES  # GGUF types llama.cpp runs (batch 1); () for none

    @classmethod
    def quick(cls) -> "DecodeSettings":
        return cls(batches=(1,), new_tokens=33, variants=("dense fp32", "spqr-3"), rounds=3, threads=(2,),
                   llama_cpp=("Q4_0",), long_prompt_tokens=0)

    def cells(self) -> list[tuple[int, int]]:
        """The (batch, threads) pairs timed: every batch at the first thread count, then batch 1 at
        each other thread count."""
        return [(b, self.threads[0]) for b in self.batches] + [(1, t) for t in self.threads[1:]]


def cell(batch: int, threads: int) -> str:
    """The key of a (batch, threads) cell in the results: ``b1t2``."""
    return f"b{batch}t{threads}"


def recorded_cells(settings: dict) -> list[tuple[int, int]]:
    """The (batch, threads) cells of a results file's ``settings``."""
    return DecodeSettings(batches=tuple(settings["batches"]), threads=tuple(settings["threads"])).cells()


@contextlib.contextmanager
def thread_count(threads: int):
    """Run torch and the numba kernels on ``threads`` threads, then restore both."""
    before = torch.get_num_threads(), numba.get_num_threads()
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise SparsaError(f"bench decode: {threads} threads asked, numba has {numba.config.NUMBA_NUM_THREADS}")
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def spqr_config(s: "DecodeSettings") -> SpQRConfig:
    """The spqr-3 variant's config: 3-bit, calibrated on ``s.nsamples`` windows of ``s.calib_seqlen`` tokens."""
    return SpQRConfig(bits=3, nsamples=s.nsamples, seqlen=s.calib_seqlen)


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
    config = {"spqr-3": spqr_config(s),
              "quant-4": RTNConfig(bits=4, group_size=32),
              "quant-4 sym": RTNConfig(bits=4, group_size=32, symmetric=True),  # Q4_0's grid, 4.5 bits
              "bitmap-50%": MagnitudeConfig(sparsity=0.5),
              "nm-2:4": MagnitudeConfig(sparsity=0.5, pattern="2:4"),
              "block-70%": MagnitudeConfig(sparsity=0.7, pattern="block:1x16")}[name]
    quantized = name in ("spqr-3", "quant-4", "quant-4 sym")  # these take the output head too; pruning it would wreck the model
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


def time_variant(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, float]:
    """(tokens/s, ms per decode step, prompt tokens/s) of one greedy decode of ``new_tokens`` after ``ids``."""
    out = greedy_decode(model, ids, new_tokens)
    return out.tokens_per_s, 1e3 * out.decode_seconds / (new_tokens - 1), ids.numel() / out.prefill_seconds


def time_llama_cpp(gguf, threads: int, s: "DecodeSettings") -> tuple[float, float, float]:
    """The same three figures from two ``llama-bench`` runs of ``gguf`` (batch 1)."""
    decode = llama_cpp.decode_tokens_per_s(gguf, threads, s.prompt_tokens, s.new_tokens).tokens_per_s
    prefill = llama_cpp.prefill_tokens_per_s(gguf, threads, s.prompt_tokens).tokens_per_s
    return decode, 1e3 / decode, prefill


def reference_check(name: str, model, ids: torch.Tensor, n: int) -> dict:
    """The first ``n`` greedy tokens of ``model``, and for compressed variants their match with the
    reference path."""
    out = greedy_decode(model, ids, n)
    row = {"tokens": out.tokens[0].tolist()}
    if not name.startswith("dense"):
        with decoded_weights(model):
            ref = greedy_decode(model, ids, n)
        row["reference_match"] = first_mismatch(out.tokens, ref.tokens, ref.top2_gap, n)
        if not row["reference_match"]["match"]:
            with fp32_path():
                fp32 = greedy_decode(model, ids, n)
            row["reference_match"]["fp32_activations"] = first_mismatch(fp32.tokens, ref.tokens, ref.top2_gap, n)
    return row


def step_bytes(model, gguf, config, s: DecodeSettings) -> int | None:
    """Bytes one batch-1 decode step reads: sparsa's compiled step's weights (None without one) or
    llama.cpp's GGUF file, plus the KV cache at the timed steps' mean position (fp32 for sparsa,
    llama.cpp's default f16)."""
    if model is not None:
        weights, cache_bytes = LeanLlama(model, 1, s.prompt_tokens + s.new_tokens).step_bytes(), 4
    elif gguf is not None:
        weights, cache_bytes = gguf.stat().st_size, 2
    else:
        return None
    if weights is None:
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    position = s.prompt_tokens + s.new_tokens / 2
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * cache_bytes * position
    return int(weights + cache)


def run_rounds(models: dict, ggufs: dict, s: DecodeSettings, prompt: torch.Tensor, long_prompt: torch.Tensor,
               progress: bool) -> dict[str, dict]:
    """Round-robin timing of sparsa's ``models`` and llama.cpp's ``ggufs`` (batch 1 only), in an
    order rotated each round: per runner, per cell, every round's (tokens/s, ms/step, prompt tokens/s),
    and under ``"long"`` every round's prompt tokens/s of ``long_prompt`` (batch 1, first thread count)."""
    names = list(models) + list(ggufs)
    samples = {name: {} for name in names}
    for r in tqdm(range(s.rounds), desc="bench decode rounds", disable=not progress):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for batch, threads in s.cells():
                if name in ggufs and batch != 1:
                    continue
                with thread_count(threads):
                    sample = (time_variant(models[name], batch_of(prompt, batch), s.new_tokens) if name in models
                              else time_llama_cpp(ggufs[name], threads, s))
                samples[name].setdefault(cell(batch, threads), []).append(sample)
            if long_prompt.numel():
                with thread_count(s.threads[0]):
                    samples[name].setdefault("long", []).append(
                        long_prompt.numel() / greedy_decode(models[name], long_prompt, 1).prefill_seconds if name in models
                        else llama_cpp.prefill_tokens_per_s(ggufs[name], s.threads[0], long_prompt.numel()).tokens_per_s)
    return samples


def batch_of(prompt: torch.Tensor, batch: int) -> torch.Tensor:
    return prompt[:1].expand(batch, -1).contiguous()


def table_cells(payload: dict) -> tuple[list[str], list[list[str]]]:
    """The decode table's header and one row of cells per variant: tokens/s and its ratio over dense
    fp32 in each (batch, threads) cell, batch-1 prompt tokens/s, the reference-match verdict, and
    the kernels the dispatcher ran (llama.cpp: its build)."""
    s = payload["settings"]
    cells = [(cell(b, t), b, t) for b, t in recorded_cells(s)]
    long, first = s.get("long_prompt_tokens", 0), s["threads"][0]
    floor = "bandwidth_gb_per_s" in payload
    header = ["variant", *(c for _, b, t in cells for c in (f"tokens/s (batch {b}, {t} thr.)", "x fp32")),
              *(f"prompt tokens/s ({t} thr.)" for t in s["threads"]),
              *([f"prompt tokens/s ({long} tokens, {first} thr.)"] if long else []),
              *([f"floor tokens/s (batch 1, {first} thr.)", "x floor"] if floor else []), "match", "kernel"]
    extra = (1 if long else 0) + (2 if floor else 0)
    dense = next((r for r in payload["rows"] if r["variant"] == "dense fp32" and "skipped" not in r), None)
    rows = []
    for r in payload["rows"]:
        if "skipped" in r:
            rows.append([r["variant"], *("n/a" for _ in range(2 * len(cells) + len(s["threads"]) + extra)), r["skipped"],
                         ""])
            continue
        out = []
        for key, _, _ in cells:
            tps = r["tokens_per_s"].get(key)
            out += (["n/a", ""] if tps is None else
                    [f"{tps:.1f}", f"{tps / dense['tokens_per_s'][key]:.2f}x" if dense else "n/a"])
        out += [f"{r['prompt_tokens_per_s'][cell(1, t)]:.0f}" if cell(1, t) in r["prompt_tokens_per_s"] else "n/a"
                for t in s["threads"]]
        if long:
            out.append(f"{r['long_prompt_tokens_per_s']:.0f}")
        if floor:
            out += (["n/a", "n/a"] if r.get("floor_tokens_per_s") is None else
                    [f"{r['floor_tokens_per_s']:.0f}", f"{r['x_floor']:.2f}x"])
        rows.append([r["variant"], *out, match_verdict(r.get("reference_match")), kernel_label(r)])
    return header, rows


def match_verdict(match: dict | None) -> str:
    """The ``match`` cell: yes, a near tie, or the step of divergence with the reference's top-2 gap
    there and the fp32-activation decode's own verdict."""
    if match is None:
        return "-"
    if match["first_difference"] is None:
        return "yes"
    if match["near_tie"]:
        return f"near tie at step {match['first_difference']}"
    text = f"NO: step {match['first_difference']} (top-2 gap {match['reference_top2_gap']:.3f})"
    if "fp32_activations" in match:
        text += "; fp32 activations: " + match_verdict(match["fp32_activations"])
    return text


def settings_sentence(payload: dict) -> str:
    """Prompt, generation length, rounds and what each column means."""
    s = payload["settings"]
    text = (f"Prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens, the prefill excluded from "
            f"tokens/s; the median of {s['rounds']} round-robin rounds. `x fp32`: tokens/s over dense fp32 in the "
            f"same cell. `match`: the first {s['match_tokens']} greedy tokens against the reference path (decode "
            "the weights, dense matmul). `kernel`: what the dispatcher ran for the variant's compressed layers.")
    if s.get("long_prompt_tokens"):
        text += (f" The {s['long_prompt_tokens']}-token prompt is prefilled once more per round, at batch 1 and "
                 f"{s['threads'][0]} threads.")
    if "bandwidth_gb_per_s" in payload:
        text += (f" `floor`: the read bandwidth measured in the same process ({payload['bandwidth_gb_per_s']:.1f} GB/s, "
                 f"{s['threads'][0]} threads) over the bytes one batch-1 step reads (the compiled step's weight "
                 "arrays, each once, and the KV cache at the timed steps' mean position; llama.cpp: its GGUF file and "
                 "an f16 cache); `x floor`: tokens/s over the floor's.")
    if "llama_cpp" in payload:
        lc = payload["llama_cpp"]
        long = f", `-p {s['long_prompt_tokens']} -n 0` for the long one" if s.get("long_prompt_tokens") else ""
        text += (f" llama.cpp {lc['build']} (`llama-bench -r 1` per round: `-p 0 -n {s['new_tokens'] - 1} -d "
                 f"{s['prompt_tokens'] + 1}` for decode, `-p {s['prompt_tokens']} -n 0` for the prompt{long}) on GGUF "
                 "files of the same weights, batch 1.")
    return text


def markdown(payload: dict) -> str:
    m = payload["machine"]
    header, rows = table_cells(payload)
    lines = ["# decode: greedy tokens/s of SmolLM2-135M, one lean loop for every variant", "",
             f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}). "
             + settings_sentence(payload), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def kernel_label(row: dict) -> str:
    """What a variant's first batch ran, without module paths: the formats decoded in the compiled
    step and the kernels of the rest (the prefill, or every layer without a compiled step);
    dense layers outside the step run nn.Linear."""
    if "runtime" in row:
        return row["runtime"]
    kernels = next(iter(row["kernels"].values()))
    in_step = sorted(k.split(": ", 1)[0] for k in kernels if k.endswith(".compiled_step"))
    others = ", ".join(sorted({k.rsplit(".", 1)[-1] for k in kernels if not k.endswith(".compiled_step")}))
    if not in_step:
        return others or "torch nn.Linear"
    return f"compiled step ({', '.join(in_step)})" + (f"; prefill: {others}" if others else "")


def figure(payload: dict):
    """Tokens/s per variant and batch (log scale)."""
    s = payload["settings"]
    columns = {cell(b, t): f"batch {b}, {t} thr." for b, t in recorded_cells(s)}
    return batch_bars(payload, "tokens_per_s", "tokens / s", f"{s['model']}: greedy decode", columns)


def llama_cpp_files(s: DecodeSettings, rows: list[dict]) -> tuple[dict, str | None]:
    """llama.cpp's GGUF file per row name (``llama.cpp Q4_0``), and its build; appends one row per
    type to ``rows`` (a ``skipped`` one, saying why, when the tools are missing)."""
    ggufs, build = {}, None
    why = llama_cpp.missing_tools() if s.llama_cpp else None
    for kind in s.llama_cpp:
        name = f"llama.cpp {kind}"
        if why:
            rows.append({"variant": name, "skipped": why})
            continue
        ggufs[name] = llama_cpp.gguf_file(kind)
        if build is None:
            run = llama_cpp.decode_tokens_per_s(ggufs[name], 1, 1, 2)  # warm-up; names the build
            build = f"{run.build_commit} (b{run.build_number})"
        rows.append({"variant": name, "runtime": f"llama.cpp {kind}"})
    return ggufs, build


def run_decode(s: DecodeSettings, *, out_dir="bench/results", name: str = "decode", progress: bool = True) -> dict:
    """Build every variant, time them in rounds, and write ``<name>.{json,md,png}``."""
    lm = load_model(s.model)
    lm.model.eval()
    corpus = load_corpus("wiki")
    prompt = tokenize(lm.tokenizer, corpus.eval[: 40 * s.prompt_tokens])[None, : s.prompt_tokens]
    calibration = None
    if "spqr-3" in s.variants:
        calibration = calibration_for(spqr_config(s), lm.tokenizer, s.seed, bos_for(lm.tokenizer, s.bos))
    long_prompt = tokenize(lm.tokenizer, corpus.eval[: 40 * s.long_prompt_tokens])[None, : s.long_prompt_tokens]
    rows, models = [], {}
    for variant in tqdm(s.variants, desc="bench decode: build", disable=not progress):
        model = compressed(copy.deepcopy(lm.model), variant, s, calibration)
        if isinstance(model, str):
            rows.append({"variant": variant, "skipped": model})
            continue
        rows.append({"variant": variant, "kernels": {str(b): ran_kernels(variant, model, batch_of(prompt, b))
                                                     for b in s.batches}})
        models[variant] = model
    ggufs, build = llama_cpp_files(s, rows)
    with thread_count(s.threads[0]):
        bandwidth = read_bandwidth(s.threads[0])
    samples = run_rounds(models, ggufs, s, prompt, long_prompt, progress)
    for row in rows:
        if "skipped" in row:
            continue
        runs = dict(samples[row["variant"]])
        long = runs.pop("long", None)
        row["tokens_per_s"] = {c: median([t for t, _, _ in runs[c]]) for c in runs}
        row["ms_per_step"] = {c: median([ms for _, ms, _ in runs[c]]) for c in runs}
        row["prompt_tokens_per_s"] = {c: median([p for _, _, p in runs[c]]) for c in runs if c.startswith("b1t")}
        row["tokens_per_s_rounds"] = {c: [t for t, _, _ in runs[c]] for c in runs}
        if long:
            row["long_prompt_tokens_per_s"] = median(long)
        read = step_bytes(models.get(row["variant"]), ggufs.get(row["variant"]), lm.model.config, s)
        if read is not None:
            row["bytes_per_token"] = read
            row["floor_tokens_per_s"] = bandwidth * 1e9 / read
            row["x_floor"] = row["tokens_per_s"][cell(1, s.threads[0])] / row["floor_tokens_per_s"]
        if row["variant"] in models:
            with thread_count(max(s.threads)):
                row.update(reference_check(row["variant"], models[row["variant"]], batch_of(prompt, s.batches[0]),
                                           s.match_tokens))
    dense = next((r for r in rows if r["variant"] == "dense fp32" and "skipped" not in r), None)
    for row in rows:
        if dense and "skipped" not in row:
            row["x_dense_fp32"] = {c: v / dense["tokens_per_s"][c] for c, v in row["tokens_per_s"].items()}
    payload = {"settings": asdict(s), "machine": machine("cpu"), "rows": rows, "bandwidth_gb_per_s": bandwidth}
    if build is not None:
        payload["llama_cpp"] = {"version": llama_cpp.VERSION, "build": build}
    if calibration is not None:
        payload["bos"] = bos_for(lm.tokenizer, s.bos).to_dict()
    fig = figure(payload)
    write_results(out_dir, name, payload, markdown(payload), fig)
    return payload
