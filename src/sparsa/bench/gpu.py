"""``sparsa bench gpu``: our Triton kernels against what torch offers on a CUDA device.

For each weight shape, token count and sparsity, in one process: cuBLAS fp16 dense
(``F.linear``), torch BSR (``W.to_sparse_bsr`` @ ``Xᵀ``) on the same block-sparse weight, torch
2:4 (``to_sparse_semi_structured``, on a 2:4-pruned copy: its sparsity is fixed at 50%), and
ours (:mod:`sparsa.kernels.triton.block_sparse`). Each peer's output is checked against dense
on its own weight first; a peer that cannot run says why. Times: median of
``triton.testing.do_bench`` (CUDA events, L2 flushed between calls) in ms.

Then, end to end, decode tokens/s of a Llama-style stack at 7B shapes with random weights:
dense fp16 against SpQR 3-bit and 32x32 blocks at 50% and 70% (:mod:`sparsa.bench.gpu_decode`).

Without a CUDA device nothing is timed: the command says so and exits 0.
"""

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsa.bench.gpu_decode import ROUNDS, DecodeShape, run_decode_variants
from sparsa.bench.results import case_table, machine, write_results
from sparsa.bench.spmm import block_weight
from sparsa.bench.timing import Timer, cuda_timer
from sparsa.compress.magnitude import prune_nm
from sparsa.formats import BlockSparse
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton

DENSE, OURS = "cuBLAS fp16 dense", "ours Triton block"
NO_CUDA = "no CUDA device: sparsa bench gpu times GPU kernels and ran nothing here"


@dataclass(frozen=True)
class GpuSettings:
    """Shapes (out, in), token counts, sparsities, the block side, the timing budget, and the
    end-to-end decode's stack (``decode``; None skips it) and its round-robin rounds."""

    shapes: tuple[tuple[int, int], ...] = ((4096, 4096), (11008, 4096), (4096, 11008))
    tokens: tuple[int, ...] = (1, 16, 128, 2048)
    sparsities: tuple[float, ...] = (0.7, 0.9)
    block: int = 32
    rep_ms: int = 100
    decode: DecodeShape | None = DecodeShape()
    decode_rounds: int = ROUNDS
    seed: int = 0

    @classmethod
    def quick(cls) -> "GpuSettings":
        return cls(shapes=((4096, 4096),), tokens=(1, 128), sparsities=(0.9,), rep_ms=25,
                   decode=DecodeShape(layers=4, new_tokens=16))


def two_four(W: torch.Tensor) -> torch.Tensor:
    """``W`` with the two smallest |w| of every 4 consecutive inputs zeroed (2:4, magnitude pruning's mask)."""
    return W * prune_nm(W, 2, 4)


def peers(W: torch.Tensor, block: int) -> dict[str, tuple[torch.Tensor, Callable] | str]:
    """name -> (the weight it multiplies, ``run(x) -> Y``), or why it cannot run. ``W``: fp16 block-sparse."""
    found: dict[str, tuple[torch.Tensor, Callable] | str] = {DENSE: (W, lambda x: F.linear(x, W))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "sparse support is in beta"
            bsr = W.to_sparse_bsr((block, block))
        found[f"torch BSR {block}x{block}"] = (W, lambda x: (bsr @ x.t()).t())
    except Exception as e:  # noqa: BLE001 - the peer's own failure is the result
        found[f"torch BSR {block}x{block}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    try:
        from torch.sparse import to_sparse_semi_structured

        W24 = two_four(W)
        semi = to_sparse_semi_structured(W24)
        found["torch 2:4 (50%)"] = (W24, lambda x: F.linear(x, semi))
    except Exception as e:  # noqa: BLE001
        found["torch 2:4 (50%)"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    fmt = BlockSparse.from_dense(W, block=(block, block))
    found[OURS] = (W, lambda x: block_sparse_linear_triton(x, fmt))
    return found


def run_case(out_features: int, in_features: int, tokens: int, sparsity: float, s: GpuSettings, device: str,
             timer: Timer) -> dict:
    """Check then time every peer on one problem (fp16 activations and weights)."""
    g = torch.Generator().manual_seed(s.seed)
    W = block_weight(out_features, in_features, (s.block, s.block), sparsity, g).to(device, torch.float16)
    x = torch.randn(tokens, in_features, generator=g).to(device, torch.float16)
    ms, errors, skipped = {}, {}, {}
    for name, entry in peers(W, s.block).items():
        if isinstance(entry, str):
            skipped[name] = entry
            continue
        weight, run = entry
        try:
            got = run(x)
        except Exception as e:  # noqa: BLE001 - a peer that fails on this shape is reported, not fatal
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        expected = x.float() @ weight.float().t()
        errors[name] = float((got.float() - expected).norm() / expected.norm().clamp_min(1e-30))
        if errors[name] > 1e-2:
            raise AssertionError(f"bench gpu: {name} is wrong on {out_features}x{in_features} at {tokens} tokens "
                                 f"(relative error {errors[name]:.2e})")
        ms[name] = timer(lambda run=run: run(x))
    return {"out": out_features, "in": in_features, "tokens": tokens, "sparsity": sparsity, "ms": ms,
            "rel_error": errors, "skipped": skipped}


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# gpu: Y = X Wᵀ, fp16, block-sparse W against cuBLAS dense, torch BSR and torch 2:4", "",
             f"Measured {m['date']} on {m.get('gpu', m['device'])} (torch {m['torch']}). Blocks "
             f"{payload['settings']['block']}x{payload['settings']['block']}; torch 2:4 runs a 2:4-pruned copy "
             "(50%, whatever the row's sparsity). Times: ms, median of triton.testing.do_bench; "
             "`x`: dense ms / peer ms.", ""]
    lines += case_table(payload["cases"], DENSE, digits=4)
    if payload.get("decode"):
        d = payload["settings"]["decode"]
        rounds = len(payload["decode"][0].get("tokens_per_s_rounds", [None]))
        lines += ["", f"## Decode, batch 1: {d['layers']} layers, hidden {d['hidden']}, MLP {d['ffn']}, {d['heads']} "
                  f"heads, {d['new_tokens']} tokens (random weights, one set shared by all layers)", "",
                  f"tokens/s: median of {rounds} round-robin rounds (every variant once per round).", "",
                  "| variant | tokens/s | x dense fp16 | rounds |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['tokens_per_s']:.1f} | {r.get('x_dense', float('nan')):.2f}x | "
                  f"{', '.join(f'{t:.1f}' for t in r.get('tokens_per_s_rounds', []))} |" for r in payload["decode"]]
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """Ours over dense against tokens, one line per (shape, sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = dict.fromkeys((c["out"], c["in"], c["sparsity"]) for c in payload["cases"])
    for out_features, in_features, sparsity in keys:
        pts = [(c["tokens"], c["ms"][DENSE] / c["ms"][OURS]) for c in payload["cases"]
               if (c["out"], c["in"], c["sparsity"]) == (out_features, in_features, sparsity)
               and OURS in c["ms"] and DENSE in c["ms"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{out_features}x{in_features} {sparsity:.0%}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("speed-up over cuBLAS fp16")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_gpu(s: GpuSettings, *, out_dir="bench/results", name: str = "gpu", device: str = "cuda",
            timer: Timer | None = None, apply: Callable | None = None, progress: bool = True) -> dict:
    """Time every case and the decode on ``device`` and write ``<name>.{json,md,png}``; without
    CUDA (and no other ``device`` asked for) return ``{"skipped": ...}`` and write nothing.
    ``timer`` and ``apply`` (format kernel for the decode) replace the CUDA timing and the
    dispatch, for tests on the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": NO_CUDA}
    timer = timer or cuda_timer(s.rep_ms)
    work = [(o, i, n, sp) for o, i in s.shapes for n in s.tokens for sp in s.sparsities]
    cases = [run_case(o, i, n, sp, s, device, timer) for o, i, n, sp in tqdm(work, desc="bench gpu",
                                                                               disable=not progress)]
    payload = {"settings": asdict(s), "machine": machine(device), "cases": cases,
               "ratios": [{"case": f"{c['out']}x{c['in']} tokens={c['tokens']} sparsity={c['sparsity']:.0%}",
                           **{f"{OURS} / {p}": c["ms"][p] / c["ms"][OURS] for p in c["ms"]
                              if p != OURS and OURS in c["ms"]}} for c in cases]}
    if s.decode is not None:
        payload["decode"] = run_decode_variants(s.decode, device, seed=s.seed, rounds=s.decode_rounds,
                                                **({} if apply is None else {"apply": apply}))
    write_results(out_dir, name, payload, markdown(payload), figure(payload))
    return payload

