"""llama.cpp as a peer: ``llama-bench`` speed, and its quantizer and quality tools on GGUF files.

``make peers`` builds ``llama-bench`` and ``llama-quantize`` (and the quality tools) once (``tools/build_llama_cpp.sh``)
into ``$SPARSA_CACHE/peers/llama.cpp-<VERSION>/bin``. The GGUF files are the shipped Q4_1 (the
weights sparsa's dense fp32 model is dequantized from) and, made once with
``llama-quantize --allow-requantize`` from it, F32, Q8_0 and Q4_0 of the same weights.

Each measurement is one ``llama-bench`` process with one repetition (``-r 1``, after its own
warm-up run), so the caller can put it in the same round-robin rounds as sparsa's variants:

* decode: ``-p 0 -n N-1 -d P+1``: ``N - 1`` single-token steps on a context already holding
  ``P + 1`` tokens, the work sparsa's greedy loop times after a ``P``-token prompt (its first new
  token comes from the prefill);
* prefill: ``-p P -n 0``: one ``P``-token prompt.
"""

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sparsa.errors import SparsaError
from sparsa.nn.models import cache_root, smollm2_gguf

VERSION = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp is built
TYPES = ("F32", "Q8_0", "Q4_1", "Q4_0")
SHIPPED = "Q4_1"
ATTEMPTS = 3  # llama-perplexity runs before its output counts as cut short


def tools_dir() -> Path:
    """Where ``make peers`` puts the binaries."""
    return cache_root() / "peers" / f"llama.cpp-{VERSION}" / "bin"


def cpu_flags() -> str:
    """This CPU's ``flags`` line of /proc/cpuinfo (what the build script records beside its
    ``-march=native`` binaries)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line for line in lines if line.startswith("flags")), "")


def missing_tools(tools: tuple[str, ...] = ("llama-bench", "llama-quantize")) -> str | None:
    """Why llama.cpp's ``tools`` cannot run here, or None when all are built for this CPU."""
    absent = [t for t in tools if not (tools_dir() / t).is_file()]
    if absent:
        return f"llama.cpp is not built ({', '.join(absent)} not in {tools_dir()}); run `make peers`"
    built_for = tools_dir().parent / "cpu-flags"
    if not built_for.is_file() or built_for.read_text().strip() != cpu_flags().strip():
        return f"llama.cpp in {tools_dir()} was built for another CPU (-march=native); run `make peers` to rebuild"
    return None


def gguf_file(kind: str) -> Path:
    """The SmolLM2 GGUF of type ``kind``: the shipped Q4_1, others requantized from it once."""
    if kind not in TYPES:
        raise SparsaError(f"llama.cpp type {kind}: not one of {', '.join(TYPES)}")
    shipped = smollm2_gguf()
    if kind == SHIPPED:
        return shipped
    path = cache_root() / "peers" / "gguf" / f"{shipped.stem.removesuffix('.' + SHIPPED)}.{kind}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            run([str(tools_dir() / "llama-quantize"), "--allow-requantize", str(shipped), str(tmp), kind, "2"],
                f"llama-quantize to {kind}")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def run(argv: list[str], what: str) -> str:
    """``argv``'s stdout; a failure raises naming ``what`` with the end of its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise SparsaError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


@dataclass(frozen=True)
class LlamaBenchResult:
    """One ``llama-bench`` test: tokens/s and the build that ran it."""

    tokens_per_s: float
    build_commit: str
    build_number: int


def parse_llama_bench(stdout: str) -> LlamaBenchResult:
    """The single test in ``llama-bench -o json`` output."""
    try:
        tests = json.loads(stdout)
        (test,) = tests
        return LlamaBenchResult(float(test["avg_ts"]), str(test["build_commit"]), int(test["build_number"]))
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as e:
        raise SparsaError(f"llama-bench printed output sparsa cannot read ({type(e).__name__}: {e})") from None


def llama_bench(gguf: Path, threads: int, *, prompt: int = 0, new: int = 0, depth: int = 0) -> LlamaBenchResult:
    """One repetition of one ``llama-bench`` test on ``gguf`` with ``threads`` threads."""
    argv = [str(tools_dir() / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(prompt),
            "-n", str(new), "-r", "1", "-o", "json"]
    if depth:
        argv += ["-d", str(depth)]
    return parse_llama_bench(run(argv, f"llama-bench on {gguf.name}"))


def decode_tokens_per_s(gguf: Path, threads: int, prompt_tokens: int, new_tokens: int) -> LlamaBenchResult:
    """Single-token decode tokens/s for the work sparsa's greedy loop times (module docstring)."""
    return llama_bench(gguf, threads, new=new_tokens - 1, depth=prompt_tokens + 1)


def prefill_tokens_per_s(gguf: Path, threads: int, prompt_tokens: int) -> LlamaBenchResult:
    """Prompt tokens/s of one ``prompt_tokens`` prompt."""
    return llama_bench(gguf, threads, prompt=prompt_tokens)


def quantize(source: Path, out: Path, qtype: str, *, imatrix: Path | None = None, pure: bool = False,
             token_embedding_type: str | None = None, threads: int = 2) -> None:
    """``llama-quantize`` ``source`` to ``out`` as ``qtype`` (a llama.cpp type name: ``Q4_0``,
    ``Q4_K_S``, ...), weighted by ``imatrix`` when given; ``pure``: every matrix ``qtype`` (no
    mixture), the embedding ``token_embedding_type`` when given."""
    argv = [str(tools_dir() / "llama-quantize")]
    if imatrix is not None:
        argv += ["--imatrix", str(imatrix)]
    if pure:
        argv.append("--pure")
    if token_embedding_type is not None:
        argv += ["--token-embedding-type", token_embedding_type]
    run(argv + [str(source), str(out), qtype, str(threads)], f"llama-quantize to {qtype}")


def compute_imatrix(model: Path, text: Path, out: Path, *, ctx: int, chunks: int, threads: int = 2) -> None:
    """``llama-imatrix``: the importance matrix of ``model`` on the first ``chunks`` windows of
    ``ctx`` tokens of ``text``, written to ``out``."""
    run([str(tools_dir() / "llama-imatrix"), "-m", str(model), "-f", str(text), "-o", str(out), "-c", str(ctx),
         "--chunks", str(chunks), "-t", str(threads)], f"llama-imatrix on {model.name}")


@dataclass(frozen=True)
class LlamaPerplexity:
    """``llama-perplexity --kl-divergence``'s figures against the base logits: perplexity, mean and
    99th-percentile KL divergence (nats; the percentile None when its summary was lost) and the
    same-top-token share."""

    ppl: float
    kld_mean: float
    kld_p99: float | None
    same_top: float


CHUNK_ROW = re.compile(r"^\s*(\d+)\s+([-+0-9.eE]+)\s+±\s+\S+\s+\S+\s+±\s+\S+\s+([-+0-9.eE]+)\s+±\s+\S+\s+"
                       r"\S+\s+±\s+\S+\s+%\s+([-+0-9.eE]+)\s+±", re.MULTILINE)  # a --kl-divergence chunk row


def parse_llama_perplexity(stdout: str, chunks: int) -> LlamaPerplexity:
    """The figures of a ``llama-perplexity --kl-divergence`` run over ``chunks`` chunks.

    Each chunk's row carries the running figures (means over every position so far) and is
    flushed as it is printed, while the summary after the last chunk may be lost (this build
    sometimes exits without flushing its output): perplexity, mean KLD and the same-top share are
    the last row's, the 99th percentile KLD the summary's when it was printed.
    """
    rows = CHUNK_ROW.findall(stdout)
    if not rows or int(rows[-1][0]) != chunks:
        raise SparsaError(f"llama-perplexity printed {len(rows)} of {chunks} KL divergence chunks")
    _, ppl, kld, same = rows[-1]
    p99 = re.search(r"99\.0%\s+KLD\s*:\s*([-+0-9.eE]+)", stdout)
    return LlamaPerplexity(float(ppl), float(kld), float(p99.group(1)) if p99 else None, float(same) / 100)


def save_base_logits(model: Path, text: Path, base_logits: Path, *, ctx: int, chunks: int, threads: int = 2) -> None:
    """``llama-perplexity`` of the base ``model`` on the first ``chunks`` windows of ``ctx`` tokens of
    ``text``, saving the tokens and every logit to ``base_logits`` (its perplexity is read back by
    :func:`llama_perplexity` of the base itself: the base run prints its figures only to its logger,
    whose last lines may be lost)."""
    run([str(tools_dir() / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks",
         str(chunks), "-t", str(threads), "--kl-divergence-base", str(base_logits)], f"llama-perplexity on {model.name}")


def llama_perplexity(model: Path, base_logits: Path, *, ctx: int, chunks: int, threads: int = 2) -> LlamaPerplexity:
    """``llama-perplexity --kl-divergence`` of ``model`` against ``base_logits`` (:func:`save_base_logits`):
    the same ``chunks`` windows of ``ctx`` tokens, the second half of each scored."""
    argv = [str(tools_dir() / "llama-perplexity"), "-m", str(model), "-c", str(ctx), "--chunks", str(chunks),
            "-t", str(threads), "--kl-divergence-base", str(base_logits), "--kl-divergence"]
    for attempt in range(ATTEMPTS):  # with several threads this build sometimes stops early, exit status 0
        try:
            return parse_llama_perplexity(run(argv, f"llama-perplexity on {model.name}"), chunks)
        except SparsaError as err:
            if "KL divergence chunks" not in str(err) or attempt == ATTEMPTS - 1:
                raise SparsaError(f"llama-perplexity on {model.name}: {err}") from None
