"""Run inside auto-round's own virtual environment (``make peers``), never imported by sparsa.

``python auto_round_peer.py REQUEST.json``: quantize a Hugging Face directory with Intel's
auto-round to a GGUF type and write the file. The request names ``hf_dir``, ``tokens`` (the
calibration windows: ``nsamples`` lists of ``seqlen`` token ids, given to auto-round as they are), ``nsamples``, ``seqlen``, ``scheme`` (``gguf:q4_0``...), ``iters``
(0: auto-round's imatrix-weighted rounding with no tuning; 200: its default SignRound tuning),
``seed``, ``threads`` and ``out`` (the GGUF path). fp32 throughout, on the CPU, offline.
"""

import json
import os
import sys
import time
from pathlib import Path


def main(request_path: str) -> None:
    r = json.loads(Path(request_path).read_text())
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from auto_round import AutoRound

    torch.set_num_threads(r["threads"])
    start = time.perf_counter()
    work = Path(r["out"]).parent / (Path(r["out"]).name + ".d")
    windows = [torch.tensor([ids], dtype=torch.long) for ids in r["tokens"]]
    rounder = AutoRound(r["hf_dir"], scheme=r["scheme"], dataset=windows, nsamples=r["nsamples"],
                        seqlen=r["seqlen"], iters=r["iters"], seed=r["seed"], device_map="cpu", amp=False,
                        model_dtype="fp32")
    rounder.quantize_and_save(str(work), format=r["scheme"])
    made = sorted(work.rglob("*.gguf"))
    if len(made) != 1:
        sys.exit(f"auto-round wrote {len(made)} GGUF files in {work}, expected one")
    made[0].replace(r["out"])
    print(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1])
