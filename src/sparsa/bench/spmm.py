"""``sparsa bench spmm``: sparse weight x dense activations against every CPU peer, in one process.

For each weight shape ``out x in``, token count ``N`` and sparsity, every peer computes the same
``Y = X Wᵀ`` (``X: [N, in]`` fp32) and is timed side by side, round-robin, so the ratios hold
even when the machine's speed drifts. Peers whose library cannot run here are listed with the
reason. Every peer's output is checked against dense fp32 before it is timed.
"""

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsa.bench.results import case_table, machine, write_results
from sparsa.bench.timing import median, round_robin, time_call
from sparsa.formats import BlockSparse, BlockSparseInt8
from sparsa.formats.block_int8 import int8_row_codes
from sparsa.kernels.cpu.block_int8 import block_int8_linear
from sparsa.kernels.cpu.block_sparse import block_sparse_linear
from sparsa.kernels.cpu.vnni import HAS_VNNI

BERT_SHAPES = ((768, 768), (3072, 768), (768, 3072))
LLM_SHAPES = ((576, 576), (1536, 576), (4096, 4096), (11008, 4096))


@dataclass(frozen=True)
class SpmmSettings:
    """Which problems to time: (out, in, tokens) cases, sparsities, and how long to time each."""

    cases: tuple[tuple[int, int, int], ...] = tuple(
        [(o, i, n) for o, i in BERT_SHAPES for n in (128, 384)] + [(o, i, n) for o, i in LLM_SHAPES for n in (1, 16)])
    sparsities: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85, 0.9)
    rounds: int = 7
    min_seconds: float = 0.02
    seed: int = 0

    @classmethod
    def quick(cls) -> "SpmmSettings":
        return cls(cases=((3072, 768, 128), (1536, 576, 1), (1536, 576, 16)), sparsities=(0.7, 0.9), rounds=5)


def block_weight(out_features: int, in_features: int, block: tuple[int, int], sparsity: float,
                 g: torch.Generator) -> torch.Tensor:
    """[out, in] fp32 with exactly ``round(sparsity * blocks)`` of its ``block`` tiles zero."""
    r, c = block
    rows, cols = out_features // r, in_features // c
    keep = torch.ones(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: round(sparsity * rows * cols)]] = False
    mask = keep.view(rows, cols).repeat_interleave(r, 0).repeat_interleave(c, 1)
    return torch.randn(out_features, in_features, generator=g) * mask


def dense_int8(W: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dense int8 peer: per-channel int8 weights, per-token dynamic int8 activations, ``torch._int_mm``."""
    wq, ws = int8_row_codes(W)
    wq_t = wq.t().contiguous()

    def run(x):
        xq, xs = int8_row_codes(x)
        return torch._int_mm(xq, wq_t).float() * xs[:, None] * ws[None, :]

    return run


def scipy_bsr(W: torch.Tensor, block: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    import scipy.sparse

    A = scipy.sparse.bsr_matrix(W.numpy(), blocksize=block)
    return lambda x: torch.from_numpy(np.ascontiguousarray((A @ x.numpy().T).T))


def ao_sparse_int8(W: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.ao.nn.sparse.quantized.dynamic.Linear`` (int8 1x4 blocks), the in-tree sparse kernel."""
    from torch.ao.nn.sparse.quantized.dynamic import Linear

    scale = float(W.abs().max()) / 127 or 1.0
    layer = Linear(W.shape[1], W.shape[0], row_block_size=1, col_block_size=4)
    layer.set_weight_bias(torch.quantize_per_tensor(W, scale, 0, torch.qint8), None, 1, 4)
    return layer


def peers(W: torch.Tensor, sparsity: float, g: torch.Generator) -> dict[str, Callable | str]:
    """name -> ``run(x) -> Y`` (or the reason it cannot run). ``W`` has 1x16-block sparsity."""
    out_features, in_features = W.shape
    W16x1 = block_weight(out_features, in_features, (16, 1), sparsity, g)
    W16 = block_weight(out_features, in_features, (16, 16), sparsity, g)
    W4x1 = block_weight(out_features, in_features, (4, 1), sparsity, g)
    ours_int8 = BlockSparseInt8.from_dense(W4x1, block=(4, 1))
    ours_1x16, ours_16x1 = BlockSparse.from_dense(W, block=(1, 16)), BlockSparse.from_dense(W16x1, block=(16, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "sparse support is in beta"
        csr, bsr = W.to_sparse_csr(), W16.to_sparse_bsr((16, 16))
    found = {
        "dense fp32": (W, lambda x: F.linear(x, W)),
        "dense int8 (_int_mm)": (W, dense_int8(W)),
        "torch CSR": (W, lambda x: (csr @ x.t()).t()),
        "torch BSR 16x16": (W16, lambda x: (bsr @ x.t()).t()),
        "scipy BSR 1x16": (W, scipy_bsr(W, (1, 16))),
        "ours fp32 1x16": (W, lambda x: block_sparse_linear(x, ours_1x16)),
        "ours fp32 16x1": (W16x1, lambda x: block_sparse_linear(x, ours_16x1)),
        "ours int8 4x1": ((W4x1, lambda x: block_int8_linear(x, ours_int8)) if HAS_VNNI
                          else "this CPU lacks AVX-512 VNNI"),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated
            found["torch ao sparse int8 1x4"] = (W, ao_sparse_int8(W))
    except Exception as e:  # noqa: BLE001 - the peer's own failure is the result to report
        found["torch ao sparse int8 1x4"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return found


def tolerance(name: str) -> float:
    """Relative error allowed against dense fp32: int8 peers quantize, the rest only reorder sums."""
    return 0.05 if "int8" in name else 1e-4


def run_case(out_features: int, in_features: int, tokens: int, sparsity: float, s: SpmmSettings) -> dict:
    """Time every peer on one problem; median over ``s.rounds`` round-robin rounds."""
    g = torch.Generator().manual_seed(s.seed)
    W = block_weight(out_features, in_features, (1, 16), sparsity, g)
    x = torch.randn(tokens, in_features, generator=g)
    entries, errors, skipped = peers(W, sparsity, g), {}, {}
    runnable = {}
    for name, entry in entries.items():
        if isinstance(entry, str):
            skipped[name] = entry
            continue
        weight, run = entry
        expected = F.linear(x, weight)
        try:
            got = run(x)
        except Exception as e:  # noqa: BLE001 - a peer that fails on this shape is reported, not fatal
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        errors[name] = float((got - expected).norm() / expected.norm().clamp_min(1e-30))
        if errors[name] > tolerance(name):
            raise AssertionError(f"bench spmm: {name} is wrong on {out_features}x{in_features} "
                                 f"(relative error {errors[name]:.2e})")
        runnable[name] = run
    samples = round_robin({name: (lambda run=run: time_call(lambda: run(x), s.min_seconds))
                           for name, run in runnable.items()}, s.rounds)
    times = {name: median(v) * 1e3 for name, v in samples.items()}
    return {"out": out_features, "in": in_features, "tokens": tokens, "sparsity": sparsity, "ms": times,
            "rel_error": errors, "skipped": skipped}


def ratios(case: dict) -> dict[str, float]:
    """Speed-ups of each of our kernels over each peer (peer ms / ours ms)."""
    ms = case["ms"]
    return {f"{ours} / {peer}": ms[peer] / ms[ours] for ours in ms if ours.startswith("ours")
            for peer in ms if not peer.startswith("ours")}


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# spmm: Y = X Wᵀ, sparse W, fp32 activations", "",
             f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}), every peer in one "
             "process, round-robin, median of rounds. Ours and CSR/scipy run on 1x16-block weights (ours 16x1 on a "
             "16x1-block weight, ours int8 on a 4x1-block weight, torch BSR on a 16x16-block weight: MKL takes square "
             "blocks only) of equal sparsity. int8 peers quantize activations per token on the fly, inside the timing. "
             "Times in ms; `x` columns: dense fp32 ms / peer ms.", ""]
    lines += case_table(payload["cases"], "dense fp32")
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """Speed-up over dense fp32 against sparsity, one panel per (shape, tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((c["out"], c["in"], c["tokens"]) for c in payload["cases"]))
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        cases = [c for c in payload["cases"] if (c["out"], c["in"], c["tokens"]) == key]
        for name in dict.fromkeys(n for c in cases for n in c["ms"]):
            pts = [(c["sparsity"], c["ms"]["dense fp32"] / c["ms"][name]) for c in cases if name in c["ms"]]
            ax.plot(*zip(*pts), marker="o", label=name, linestyle="-" if name.startswith("ours") else ":")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.set_title(f"{key[0]}x{key[1]}, {key[2]} tokens", fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speed-up over dense fp32")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def run_spmm(s: SpmmSettings, *, out_dir="bench/results", name: str = "spmm", progress: bool = True) -> dict:
    """Time every case and write ``<name>.{json,md,png}``."""
    work = [(o, i, n, sp) for o, i, n in s.cases for sp in s.sparsities]
    cases = [run_case(o, i, n, sp, s) for o, i, n, sp in tqdm(work, desc="bench spmm", disable=not progress)]
    payload = {"settings": asdict(s), "machine": machine("cpu"), "cases": cases,
               "ratios": [{"case": f"{c['out']}x{c['in']} tokens={c['tokens']} sparsity={c['sparsity']:.0%}",
                           **ratios(c)} for c in cases]}
    fig = figure(payload)
    write_results(out_dir, name, payload, markdown(payload), fig)
    return payload
