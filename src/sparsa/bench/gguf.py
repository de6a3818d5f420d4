"""``sparsa bench gguf``: sparsa's GGUF exports against llama.cpp's own quantizer, scored alike.

For each ggml type asked (``q4_0``, ``q4_k``, ...), every row is a GGUF file of the same dense model:

* **llama.cpp**: ``llama-quantize`` of the dense F32 GGUF, plain; with an importance matrix that
  ``llama-imatrix`` computes on the calibration windows sparsa compresses with (decoded to text);
  and with that imatrix and ``--pure`` (every matrix of the type, the embedding Q8_0: byte for byte
  the layout sparsa writes);
* **auto-round** (Intel's, :mod:`sparsa.bench.autoround`): its GGUF export of the dense model from
  the same calibration windows, untuned (``iters 0``: its importance-weighted rounding) and, for
  ``autoround_tuned`` types, with its default SignRound tuning (``autoround_iters`` per block);
* **sparsa**: ``sparsa compress --method rtn|gptq --grid TYPE`` (decoder linears; the tied
  embedding and head stay dense) then ``sparsa export --to gguf --dense-type q8_0``.

The dense F32 GGUF is sparsa's own export of the dense model (it decodes to exactly its weights).
k-quants need rows of whole 256-wide super-blocks: a model whose widths are not multiples of 256
(SmolLM2-135M: 576) is first widened with zeros to a model computing the same function
(:func:`sparsa.nn.widen.widen_llama`), and every row of those types starts from the widened one.

Every file is scored by the same two protocols:

* sparsa's (``sparsa eval FILE.gguf``'s: transformers dequantizes the file to fp32, here in memory
  without ``sparsa eval``'s converted copy in the cache): perplexity over
  ``windows`` windows of ``seqlen`` tokens and KL divergence from the dense file's distributions
  at every predicted position (:mod:`sparsa.evaluate.divergence`);
* llama.cpp's ``llama-perplexity`` (its own kernels: activations quantized as its CPU backend
  does): perplexity over as many windows (it scores their second halves) and its KL divergence
  from the dense file's logits.

Then ``llama-bench`` times decode and prefill of llama.cpp's imatrix ``--pure`` file against
sparsa's GPTQ file of the same type (round-robin rounds, median). Rows whose tools are missing
are kept with the reason and no numbers.
"""

import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparsa.bench import autoround, llama_cpp
from sparsa.bench.results import machine, write_results
from sparsa.compress import GPTQConfig, RTNConfig
from sparsa.compress.pipeline import calibration_for, compress_checkpoint
from sparsa.data import load_corpus, tokenize
from sparsa.data.tokens import bos_for, eval_windows
from sparsa.errors import SparsaError
from sparsa.evaluate.divergence import divergence, reference_logprobs
from sparsa.formats.kquant import K_TYPES, SUPER
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.gguf_export import export_gguf
from sparsa.nn.models import gguf_model, load_model
from sparsa.nn.widen import widen_llama

LLAMA_TYPES = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
               "q4_k": "Q4_K_S", "q5_k": "Q5_K_S", "q6_k": "Q6_K"}  # llama-quantize's name of each grid
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench")


@dataclass(frozen=True)
class GgufBenchSettings:
    """The protocol: model, types, calibration (``nsamples`` x ``seqlen`` tokens of ``calib``),
    evaluation (``windows`` x ``seqlen`` of ``ppl``), seed, threads, ``llama-bench``'s rounds
    of ``new_tokens`` decoded after ``prompt_tokens``, and the types auto-round also tunes
    (``autoround_iters`` per block: over an hour per type for SmolLM2 on 2 cores; cached)."""

    model: str = "smollm2-135m"
    types: tuple[str, ...] = ("q4_0", "q4_k")
    nsamples: int = 32
    seqlen: int = 512
    windows: int = 32
    calib: str = "wiki"
    ppl: str = "wiki"
    seed: int = 0
    threads: int = 2
    rounds: int = 5
    prompt_tokens: int = 128
    new_tokens: int = 64
    autoround_tuned: tuple[str, ...] = ("q4_0",)
    autoround_iters: int = 200

    @classmethod
    def quick(cls) -> "GgufBenchSettings":
        return cls(types=("q4_0",), nsamples=8, windows=8, rounds=3, autoround_tuned=())

    def check(self) -> None:
        if not self.types:
            raise SparsaError("--types: give at least one grid")
        for t in self.types:
            if t not in LLAMA_TYPES:
                raise SparsaError(f"--types {t!r} is not one of {', '.join(LLAMA_TYPES)}")
        for t in self.autoround_tuned:
            if t not in LLAMA_TYPES:
                raise SparsaError(f"--autoround-tuned {t!r} is not one of {', '.join(LLAMA_TYPES)}")
        if self.autoround_iters < 1:
            raise SparsaError(f"--autoround-iters {self.autoround_iters}: give at least 1")

    def autoround_runs(self, t: str) -> tuple[int, ...]:
        """auto-round's tuning iterations for type ``t``: untuned always, tuned when asked."""
        return (0, self.autoround_iters) if t in self.autoround_tuned else (0,)


def say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench gguf] {message}", file=sys.stderr, flush=True)


def tensor_summary(path: Path) -> tuple[dict, int]:
    """``({ggml type: tensors}, tensor bytes)`` of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors)), sum(int(t.n_bytes) for t in reader.tensors)


def needs_widening(model, multiple: int = SUPER) -> bool:
    """Whether some decoder linear's rows are not whole ``multiple``-wide super-blocks."""
    return any(m.in_features % multiple for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))


@dataclass
class Base:
    """One dense starting point: the spec ``sparsa compress`` reads (a Hugging Face directory), the
    calibration windows, its F32 GGUF, the reference log-probabilities, the llama.cpp base logits and
    imatrix (None without the tools)."""

    label: str
    spec: str
    calibration: torch.Tensor
    f32: Path
    reference: list
    base_logits: Path | None
    imatrix: Path | None
    dense_row: dict


def make_base(model, tokenizer, label: str, s: GgufBenchSettings, work: Path, windows, calibration: torch.Tensor,
              texts: dict, tools_missing: str | None, progress: bool) -> Base:
    """Write the dense model as an HF directory, a checkpoint and an F32 GGUF; score the GGUF."""
    hf, ck, f32 = work / f"{label}-hf", work / f"{label}-dense", work / f"{label}.F32.gguf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    save_checkpoint(model, tokenizer, ck, method={"method": "dense"})
    export_gguf(ck, f32, dense_type="f32")
    say(progress, f"{label}: reference distributions of the dense file")
    dense = gguf_model(f32)
    reference = reference_logprobs(dense, windows, progress=progress)
    nll = -sum(ref.gather(1, w[1:, None]).sum().item() for ref, w in zip(reference, windows))
    positions = sum(len(r) for r in reference)
    del dense
    kinds, nbytes = tensor_summary(f32)
    row = {"row": "dense F32", "type": "f32", "base": label, "maker": "sparsa", "file_bytes": f32.stat().st_size,
           "tensor_bytes": nbytes, "tensor_types": kinds, "make_seconds": None,
           "sparsa": {"ppl": float(torch.tensor(nll / positions).exp()), "kld_mean": 0.0, "kld_p99": 0.0,
                      "same_top": 1.0, "positions": positions}}
    base_logits = imatrix = None
    if tools_missing is None:
        base_logits, imatrix = work / f"{label}.logits", work / f"{label}.imatrix.gguf"
        say(progress, f"{label}: llama-perplexity base logits, llama-imatrix")
        llama_cpp.save_base_logits(f32, texts["eval"], base_logits, ctx=s.seqlen, chunks=s.windows, threads=s.threads)
        row["llama_perplexity"] = asdict(llama_cpp.llama_perplexity(f32, base_logits, ctx=s.seqlen, chunks=s.windows,
                                                                    threads=s.threads))
        llama_cpp.compute_imatrix(f32, texts["calib"], imatrix, ctx=s.seqlen, chunks=s.nsamples, threads=s.threads)
    return Base(label, str(hf), calibration, f32, reference, base_logits, imatrix, row)


def score(row: dict, path: Path, base: Base, windows, s: GgufBenchSettings, progress: bool) -> dict:
    """Fill ``row`` with ``path``'s bytes, tensor types and both protocols' figures."""
    kinds, nbytes = tensor_summary(path)
    row.update(file_bytes=path.stat().st_size, tensor_bytes=nbytes, tensor_types=kinds)
    model = gguf_model(path)
    row["sparsa"] = divergence(model, windows, base.reference, progress=progress, desc=row["row"]).to_dict()
    del model
    if base.base_logits is not None:
        row["llama_perplexity"] = asdict(llama_cpp.llama_perplexity(path, base.base_logits, ctx=s.seqlen,
                                                                    chunks=s.windows, threads=s.threads))
    return row


def autoround_rows(t: str, base: Base, s: GgufBenchSettings, work: Path, windows, progress: bool) -> list[dict]:
    """auto-round's files of type ``t`` (untuned, and tuned for ``s.autoround_tuned`` types)."""
    qname, rows, reason = LLAMA_TYPES[t], [], autoround.missing()
    for iters in s.autoround_runs(t):
        row = {"row": f"auto-round {qname} iters {iters}", "type": t, "base": base.label, "maker": "auto-round"}
        if reason is not None:
            rows.append({**row, "skipped": reason})
            continue
        say(progress, f"{t}: {row['row']} (made once, then cached)")
        path = work / f"{base.label}.{t}.autoround{iters}.gguf"
        seconds = autoround.quantize(Path(base.spec), base.calibration, f"gguf:{qname.lower()}", iters, path,
                                     seed=s.seed, threads=s.threads, progress=progress)
        row.update(make_seconds=round(seconds, 2), file=path)
        rows.append(score(row, path, base, windows, s, progress))
    return rows


def type_rows(t: str, base: Base, s: GgufBenchSettings, work: Path, windows, tools_missing: str | None,
              progress: bool) -> list[dict]:
    """Every row of type ``t`` from ``base``: llama.cpp's three files, auto-round's, then sparsa's three."""
    qname, rows = LLAMA_TYPES[t], []
    llama_files = [(f"llama.cpp {qname}", {}), (f"llama.cpp {qname} + imatrix", {"imatrix": base.imatrix}),
                   (f"llama.cpp {qname} + imatrix --pure", {"imatrix": base.imatrix, "pure": True,
                                                            "token_embedding_type": "q8_0"})]
    for label, options in llama_files:
        row = {"row": label, "type": t, "base": base.label, "maker": "llama.cpp"}
        if tools_missing is not None:
            rows.append({**row, "skipped": tools_missing})
            continue
        path = work / f"{base.label}.{t}.llama{len(rows)}.gguf"
        say(progress, f"{t}: {label}")
        start = time.perf_counter()
        llama_cpp.quantize(base.f32, path, qname, threads=s.threads, **options)
        row.update(make_seconds=round(time.perf_counter() - start, 2), file=path)
        rows.append(score(row, path, base, windows, s, progress))
    rows += autoround_rows(t, base, s, work, windows, progress)
    cal = {"nsamples": s.nsamples, "seqlen": s.seqlen, "calib": s.calib}
    ours = [(f"sparsa rtn --grid {t}", RTNConfig(grid=t)),
            (f"sparsa gptq --grid {t}", GPTQConfig(grid=t, **cal)),
            (f"sparsa gptq --grid {t} --no-error-feedback", GPTQConfig(grid=t, error_feedback=False, **cal))]
    for i, (label, config) in enumerate(ours):
        say(progress, f"{t}: {label}")
        ck, path = work / f"{base.label}.{t}.sparsa{i}", work / f"{base.label}.{t}.sparsa{i}.gguf"
        start = time.perf_counter()
        compress_checkpoint(base.spec, config, ck, seed=s.seed, head=False, progress=progress)
        export_gguf(ck, path, dense_type="q8_0")
        row = {"row": label, "type": t, "base": base.label, "maker": "sparsa", "method": config.to_dict(),
               "make_seconds": round(time.perf_counter() - start, 2), "file": path}
        rows.append(score(row, path, base, windows, s, progress))
    return rows


def speed(t: str, rows: list[dict], s: GgufBenchSettings, progress: bool) -> dict:
    """``llama-bench`` decode and prefill tokens/s of llama.cpp's imatrix ``--pure`` file and sparsa's
    GPTQ file of type ``t``, alternating in ``s.rounds`` rounds; medians and every round."""
    files = {r["row"]: r["file"] for r in rows if r.get("file") and (r["row"].endswith("--pure")
                                                                     or r["row"] == f"sparsa gptq --grid {t}")}
    samples = {name: {"decode": [], "prefill": []} for name in files}
    say(progress, f"{t}: llama-bench, {s.rounds} rounds of {', '.join(files)}")
    for k in range(s.rounds):
        names = list(files)
        for name in names[k % len(names):] + names[:k % len(names)]:
            samples[name]["decode"].append(llama_cpp.decode_tokens_per_s(
                files[name], s.threads, s.prompt_tokens, s.new_tokens).tokens_per_s)
            samples[name]["prefill"].append(llama_cpp.prefill_tokens_per_s(
                files[name], s.threads, s.prompt_tokens).tokens_per_s)
    return {"type": t, "files": {name: {"decode_tokens_per_s": statistics.median(v["decode"]),
                                        "prefill_tokens_per_s": statistics.median(v["prefill"]),
                                        "rounds": v} for name, v in samples.items()}}


def goals(rows: list[dict], types: tuple[str, ...]) -> list[dict]:
    """Per type, each of sparsa's GPTQ files against each of llama.cpp's imatrix files and each of
    auto-round's: both protocols' perplexity and sparsa's KL divergence, with the tensor bytes of
    each (``met``: lower perplexity by sparsa's protocol at no more tensor bytes)."""
    out = []
    for t in types:
        by = {r["row"]: r for r in rows if r["type"] == t and "skipped" not in r}
        peers = [f"llama.cpp {LLAMA_TYPES[t]} + imatrix", f"llama.cpp {LLAMA_TYPES[t]} + imatrix --pure"]
        peers += [r["row"] for r in rows if r["type"] == t and r["maker"] == "auto-round"]
        for mine in (f"sparsa gptq --grid {t}", f"sparsa gptq --grid {t} --no-error-feedback"):
            for label in peers:
                ours, theirs = by.get(mine), by.get(label)
                if ours is None or theirs is None:
                    continue
                out.append({"type": t, "ours": mine, "theirs": label,
                            "ppl": [ours["sparsa"]["ppl"], theirs["sparsa"]["ppl"]],
                            "kld": [ours["sparsa"]["kld_mean"], theirs["sparsa"]["kld_mean"]],
                            "llama_perplexity_ppl": [r["llama_perplexity"]["ppl"] for r in (ours, theirs)],
                            "tensor_bytes": [ours["tensor_bytes"], theirs["tensor_bytes"]],
                            "met": ours["sparsa"]["ppl"] < theirs["sparsa"]["ppl"]
                            and ours["tensor_bytes"] <= theirs["tensor_bytes"]})
    return out


def run_gguf_bench(s: GgufBenchSettings, out_dir, name: str = "gguf", *, progress: bool = True) -> dict:
    """Run the comparison (module docstring) and write ``out_dir/<name>.{json,md}``, rewritten after
    each type so a long run keeps what it measured."""
    s.check()
    tools_missing = llama_cpp.missing_tools(TOOLS)
    lm = load_model(s.model)
    rule = bos_for(lm.tokenizer, "auto")
    corpus = load_corpus(s.ppl)
    windows = eval_windows(tokenize(lm.tokenizer, corpus.eval), s.seqlen, s.windows, bos=rule, source=s.ppl)
    calib = calibration_for(GPTQConfig(nsamples=s.nsamples, seqlen=s.seqlen, calib=s.calib), lm.tokenizer, s.seed,
                            rule)
    payload = {"settings": asdict(s), "machine": machine(), "tools_missing": tools_missing,
               "autoround_version": autoround.VERSION, "rows": [],
               "speed": [], "bases": {}, "goals": []}
    with tempfile.TemporaryDirectory(prefix="sparsa-bench-gguf-") as tmp:
        work = Path(tmp)
        texts = {"eval": work / "eval.txt", "calib": work / "calib.txt"}
        texts["eval"].write_text(corpus.eval)
        texts["calib"].write_text("\n\n".join(lm.tokenizer.decode(w, skip_special_tokens=True) for w in calib))
        groups = {"plain": [t for t in s.types if t not in K_TYPES], "wide": [t for t in s.types if t in K_TYPES]}
        for label, types in groups.items():
            if not types:
                continue
            model = lm.model
            if label == "wide" and needs_widening(model):
                model = widen_llama(model)
            elif label == "wide":
                label = "plain"
            c = model.config
            payload["bases"][label] = {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                                       "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads}
            say(progress, f"dense model {label} ({c.hidden_size} wide)")
            base = make_base(model, lm.tokenizer, label, s, work, windows, calib, texts, tools_missing, progress)
            payload["rows"].append(base.dense_row)
            for t in types:
                rows = type_rows(t, base, s, work, windows, tools_missing, progress)
                if tools_missing is None:
                    payload["speed"].append(speed(t, rows, s, progress))
                payload["rows"] += [{k: v for k, v in r.items() if k != "file"} for r in rows]
                payload["goals"] = goals(payload["rows"], s.types)
                write_results(out_dir, name, payload, markdown(payload))  # each type's rows as soon as they exist
    return payload


def cell(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_lines(rows: list[dict]) -> list[str]:
    """Markdown rows: bytes, then each protocol's perplexity and KL divergence, then the seconds
    the file took to make."""
    lines = ["| file | tensor bytes | ppl | KLD | KLD p99 | same top | llama-perplexity ppl | its KLD | "
             "its same top | made in |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['row']} | not run: {r['skipped']} | | | | | | | | |")
            continue
        a, b = r["sparsa"], r.get("llama_perplexity") or {}
        made = "-" if r.get("make_seconds") is None else f"{r['make_seconds']:.0f} s"
        lines.append(f"| {r['row']} | {r['tensor_bytes']:,} | {a['ppl']:.3f} | {a['kld_mean']:.4f} | "
                     f"{a['kld_p99']:.3f} | {a['same_top']:.1%} | {cell(b.get('ppl'))} | {cell(b.get('kld_mean'), 4)} | "
                     + ("-" if b.get("same_top") is None else f"{b['same_top']:.1%}") + f" | {made} |")
    return lines


def report(payload: dict) -> str:
    """The protocol, one table per dense model, llama-bench's speeds and the goals (markdown)."""
    s = payload["settings"]
    lines = [f"Calibration (sparsa's GPTQ and llama-imatrix): {s['nsamples']} x {s['seqlen']} tokens of "
             f"`{s['calib']}` (seed {s['seed']}), the windows decoded to text for llama-imatrix. ppl, KLD, KLD p99, "
             f"same top: the `sparsa eval FILE.gguf` protocol (transformers dequantizes the file), {s['windows']} x "
             f"{s['seqlen']} windows of `{s['ppl']}`, KL divergence (nats) from the dense file at every position. "
             f"llama-perplexity: llama.cpp {llama_cpp.VERSION}'s own kernels, {s['threads']} threads, the same text "
             f"in {s['windows']} chunks of {s['seqlen']} (second halves scored), KL divergence from the dense file's "
             "logits. Tensor bytes: the GGUF's tensor data. Our files keep the tied embedding as Q8_0; "
             "`--pure` makes llama.cpp's layout the same. auto-round "
             f"{payload['autoround_version']}: its GGUF export from the same calibration "
             f"tokens, fp32 on the CPU, {s['threads']} threads, iters 0 (no tuning) or its default tuning. Made in: "
             "the seconds from the dense file (ours: compress and export; llama.cpp: llama-quantize, the imatrix "
             "excluded; auto-round: its whole run, made once and cached).", ""]
    if payload["tools_missing"]:
        lines += [f"llama.cpp rows not run: {payload['tools_missing']}", ""]
    for base, shape in payload["bases"].items():
        rows = [r for r in payload["rows"] if r["base"] == base]
        lines += [f"**{base} model**: hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}, "
                  f"{shape['heads']} query / {shape['kv_heads']} KV heads"
                  + (" (the model zero-padded to multiples of 256, computing the same function, so that "
                     "k-quants apply)" if base == "wide" else "") + ".", ""]
        lines += table_lines(rows) + [""]
    for sp in payload["speed"]:
        lines += [f"llama-bench, {sp['type']} (median of {s['rounds']} alternating rounds; decode: {s['new_tokens']} "
                  f"tokens after {s['prompt_tokens']}; prefill: {s['prompt_tokens']} tokens): " + "; ".join(
                      f"{n}: decode {v['decode_tokens_per_s']:.1f} tok/s, prefill {v['prefill_tokens_per_s']:.1f} tok/s"
                      for n, v in sp["files"].items()) + ".", ""]
    lines += [f"- {g['type']}: `{g['ours']}` ppl {g['ppl'][0]:.3f} ({g['tensor_bytes'][0]:,} B) against "
              f"{g['theirs']} {g['ppl'][1]:.3f} ({g['tensor_bytes'][1]:,} B): "
              + ("lower at no more bytes" if g["met"] else "not lower at no more bytes") for g in payload["goals"]]
    return "\n".join(lines).rstrip("\n")


def markdown(payload: dict) -> str:
    m = payload["machine"]
    return (f"# GGUF: sparsa's exports against llama.cpp's quantizer ({payload['settings']['model']})\n\n"
            f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}).\n\n"
            + report(payload) + "\n")
