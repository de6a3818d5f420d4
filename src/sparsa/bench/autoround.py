"""Intel's auto-round as a peer: the GGUF quantizer llama.cpp users already have that tunes rounding
on calibration data (SignRound), as sparsa's GPTQ does with error feedback.

``make peers`` installs auto-round ``VERSION`` in its own virtual environment,
``$SPARSA_CACHE/peers/auto-round-<VERSION>`` (``tools/install_auto_round.sh``): it pins transformers
and pulls datasets, which sparsa's environment must not carry. sparsa never imports it; it runs
:mod:`sparsa.bench.auto_round_peer` with that environment's interpreter.

auto-round's default tuning (200 iterations per block) takes over an hour for SmolLM2-135M on 2 CPU
cores, so each file is kept in ``$SPARSA_CACHE/peers/auto-round-files`` under a key of everything it
depends on (version, scheme, iterations, seed, threads, the calibration tokens and the model's
files), with the seconds its making took. A cached file is used as is; the time reported is the
original run's.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import torch

from sparsa.errors import SparsaError
from sparsa.nn.models import cache_root

VERSION = "0.16.1"
DRIVER = Path(__file__).with_name("auto_round_peer.py")


def env_dir() -> Path:
    """auto-round's virtual environment (``make peers``)."""
    return cache_root() / "peers" / f"auto-round-{VERSION}"


def python() -> Path:
    """Its interpreter."""
    return env_dir() / "bin" / "python"


def files_dir() -> Path:
    """Where auto-round's files are kept, by key."""
    return cache_root() / "peers" / "auto-round-files"


def missing() -> str | None:
    """Why auto-round cannot run here, or None."""
    if not (env_dir() / ".sparsa-installed").is_file():
        return f"auto-round {VERSION} is not installed in {env_dir()}; run `make peers`"
    return None


def file_key(hf_dir: Path, calibration: torch.Tensor, scheme: str, iters: int, seed: int, threads: int) -> str:
    """sha256 of every input of one auto-round file."""
    h = hashlib.sha256(json.dumps([VERSION, scheme, iters, seed, threads, list(calibration.shape)]).encode())
    h.update(calibration.to(torch.int64).numpy().tobytes())
    for f in sorted(p for p in hf_dir.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def quantize(hf_dir: Path, calibration: torch.Tensor, scheme: str, iters: int, out: Path, *, seed: int, threads: int,
             progress: bool = True) -> float:
    """Write auto-round's GGUF of ``hf_dir`` (``scheme``: ``gguf:q4_0``...) to ``out``, tuned for
    ``iters`` iterations per block on ``calibration`` ([nsamples, seqlen] token ids, the windows
    sparsa's GPTQ sees); made once and cached (module docstring). Returns the seconds making it took."""
    reason = missing()
    if reason:
        raise SparsaError(reason)
    key = file_key(hf_dir, calibration, scheme, iters, seed, threads)
    store = files_dir()
    cached, record = store / f"{key}.gguf", store / f"{key}.json"
    if not (cached.is_file() and record.is_file()):
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            request = {"hf_dir": str(hf_dir), "tokens": calibration.tolist(), "nsamples": int(calibration.shape[0]),
                       "seqlen": int(calibration.shape[1]), "scheme": scheme, "iters": iters, "seed": seed,
                       "threads": threads, "out": str(tmp / "model.gguf")}
            (tmp / "request.json").write_text(json.dumps(request))
            done = subprocess.run([str(python()), "-P", str(DRIVER), str(tmp / "request.json")], stdout=subprocess.PIPE,
                                  stderr=None if progress else subprocess.PIPE, text=True)
            if done.returncode != 0:
                tail = (done.stderr or "").strip().splitlines()[-5:]
                raise SparsaError(f"auto-round {scheme} iters {iters} failed (exit {done.returncode})"
                                  + (": " + " / ".join(tail) if tail else ""))
            seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            (tmp / "model.gguf").replace(cached)
            record.write_text(json.dumps({"seconds": seconds, "scheme": scheme, "iters": iters}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.copyfile(cached, out)
    return json.loads(record.read_text())["seconds"]
