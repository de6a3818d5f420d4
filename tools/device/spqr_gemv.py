"""Time the SpQR Triton kernel alone at one token against ``F.linear`` fp16, on the GPU machine.

    python3 tools/device/spqr_gemv.py [--other NAME=SPQR_MODULE.py ...] [--sweep] [--decode TOKENS] [--json PATH]

For each 7B shape (4096x4096, 11008x4096, 4096x11008; SpQR 3-bit, β1 = β2 = 16, 1% outliers,
built like ``sparsa bench gpu``'s decode) it prints the bytes one call reads (the layout's and
the format's own), their floor at ``--bandwidth`` (default 3.0 TB/s, a device-to-device copy on
this workplace's H100), and µs per call, median of ``triton.testing.do_bench`` (every call from
Python, so host time shows where it exceeds the GPU's) and of ``do_bench_cudagraph`` (calls
replayed from a CUDA graph: the kernels alone). Each timing rotates over enough copies of the
weight to exceed the 50 MB L2. ``--other`` also times another module's ``spqr_linear_triton``
(e.g. a saved copy of a previous kernel); ``--sweep`` times the one-token kernel's rows per
program, inputs per step and warps (graph medians) and restores the module's values. Every
variant is checked against the weight decoded to fp16 first (relative error below 1e-2).
``--decode`` decodes that many tokens at batch 1 through ``sparsa bench gpu``'s 32-layer
stack with these weights (q, k, v, o: four 4096x4096 copies; gate, up: two 11008x4096; down)
for dense fp16 and every SpQR kernel, and reports tokens/s and the GPU's kernel time per token
(torch profiler), which tells host-bound from GPU-bound.
"""

import argparse
import importlib.util
import itertools
import json
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton.testing
from torch.autograd import DeviceType

import sparsa.kernels.triton.spqr as spqr
from sparsa.bench.gpu_decode import DecodeShape, decode, random_spqr, tokens_per_second

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
L2_BYTES = 50e6
SWEEP = [(rows, inputs, 4) for rows in (2, 4, 8, 16) for inputs in (512, 1024, 2048) if rows * inputs <= 16384]
SWEEP += [(rows, 1024, warps) for rows in (4, 8) for warps in (2, 8)]


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def copies(weight, n: int) -> list:
    """``n`` copies of a format (fresh tensors, so each gets its own layout) or of a tensor."""
    if isinstance(weight, torch.Tensor):
        return [weight.clone() for _ in range(n)]
    return [replace(weight, **{k: v.clone() for k, v in weight.arrays().items()}) for _ in range(n)]


def timings(call, weights: list, x: torch.Tensor, graph_only: bool = False) -> dict:
    """µs per call of ``call(x, w)`` rotating over ``weights``: do_bench and graph-replay medians.
    One call per weight first: kernel layouts (one per weight and kernel) are built outside the graph."""
    for w in weights:
        call(x, w)
    rotation = itertools.cycle(weights)

    def step():
        call(x, next(rotation))

    out = {"graph_us": 1e3 * triton.testing.do_bench_cudagraph(step, rep=50, return_mode="median")}
    if not graph_only:
        out["do_bench_us"] = 1e3 * triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    return out


def check(call, weight, x: torch.Tensor, dense: torch.Tensor) -> float:
    want = F.linear(x, dense).float()
    error = float((call(x, weight).float() - want).norm() / want.norm())
    if not error < 1e-2:
        raise AssertionError(f"relative error {error:.2e} against the decoded weight")
    return error


def registers() -> list[str]:
    """Registers and spills of every compiled one-token kernel (Triton's resource report; where it
    keeps its compiled kernels is internal to Triton, so a version that moved them gets a note)."""
    try:
        return [f"one-token kernel, warps {kernel.metadata.num_warps}: {kernel.n_regs} registers, "
                f"{kernel.n_spills} spills" for cache in spqr._spqr_gemv_kernel.device_caches.values()
                for kernel in cache[0].values()]
    except (AttributeError, IndexError, TypeError) as e:
        return [f"no resource report: {e!r}"]


def decode_figures(run: dict, tokens: int) -> dict:
    """tokens/s over ``tokens`` tokens (after a warm-up) and GPU kernel µs per token (profiled)."""
    shape = DecodeShape(new_tokens=tokens)
    speed = tokens_per_second(run, shape, "cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        decode(run, shape, 2, "cuda")
        torch.cuda.synchronize()
    busy = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    return {"tokens_per_s": speed, "gpu_kernel_us_per_token": busy / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", action="append", default=[], help="NAME=PATH: a module file whose "
                    "spqr_linear_triton is timed too")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--decode", type=int, default=0, help="tokens to decode (0: none)")
    ap.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s for the floor")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    kernels = {"ours": spqr.spqr_linear_triton}
    for other in args.other:
        name, path = other.split("=", 1)
        spec = importlib.util.spec_from_file_location(f"spqr_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kernels[name] = module.spqr_linear_triton
    results, kept = [], {}
    for out_features, in_features in SHAPES:
        g = torch.Generator().manual_seed(0)
        weight = random_spqr(out_features, in_features, g).to("cuda")
        dense = weight.to_dense(torch.float16)
        x = torch.randn(1, in_features, generator=g).to("cuda", torch.float16)
        layout = spqr.cached_layout(weight, spqr.spqr_gpu_layout)
        layout_bytes = nbytes(layout.words, layout.stat_codes, layout.perm, layout.outlier_ptr, layout.outlier_col,
                              layout.outlier_delta, weight.scale_stats, weight.zero_stats, x) + 2 * out_features
        format_bytes = nbytes(*weight.arrays().values(), x) + 2 * out_features
        row = {"shape": f"{out_features}x{in_features}", "layout_bytes": layout_bytes, "format_bytes": format_bytes,
               "dense_bytes": nbytes(dense, x) + 2 * out_features, "outliers": weight.outlier_col.numel()}
        row.update({f"{k}_floor_us": 1e6 * row[f"{k}_bytes"] / args.bandwidth for k in ("layout", "format", "dense")})
        dense_copies = copies(dense, max(4, math.ceil(2 * L2_BYTES / row["dense_bytes"])))
        row["dense fp16"] = timings(F.linear, dense_copies, x)
        spqr_copies = copies(weight, math.ceil(2 * L2_BYTES / layout_bytes))
        for name, kernel in kernels.items():
            row[f"{name}_rel_error"] = check(kernel, weight, x, dense)
            row[name] = timings(lambda x, w, kernel=kernel: kernel(x, w), spqr_copies, x)
        no_outliers = replace(weight, outlier_counts=torch.zeros_like(weight.outlier_counts),
                              outlier_col=weight.outlier_col[:0], outlier_values=weight.outlier_values[:0])
        row["ours, no outliers"] = timings(spqr.spqr_linear_triton, copies(no_outliers, len(spqr_copies)), x, True)
        if args.sweep:
            saved = spqr.GEMV_ROWS, spqr.GEMV_INPUTS, spqr.GEMV_WARPS
            row["sweep"] = {}
            for config in SWEEP:
                spqr.GEMV_ROWS, spqr.GEMV_INPUTS, spqr.GEMV_WARPS = config
                check(spqr.spqr_linear_triton, weight, x, dense)
                row["sweep"]["rows %d inputs %d warps %d" % config] = timings(
                    spqr.spqr_linear_triton, spqr_copies, x, True)["graph_us"]
            spqr.GEMV_ROWS, spqr.GEMV_INPUTS, spqr.GEMV_WARPS = saved
        results.append(row)
        print(json.dumps(row), flush=True)
        kept[(out_features, in_features)] = dense_copies[:4], spqr_copies[:4]
    if args.decode:
        shape, picks = DecodeShape(), {"q": 0, "k": 1, "v": 2, "o": 3, "gate": 0, "up": 1, "down": 0}  # copy index
        variants = {"dense fp16": lambda x, w: F.linear(x, w), **kernels}
        runs = {name: {p: (lambda x, w=kept[shape.matrix(p)][name != "dense fp16"][i], kernel=kernel: kernel(x, w))
                       for p, i in picks.items()} for name, kernel in variants.items()}
        decoded = {}
        for _ in range(2):  # the first variant to decode in a process runs slower (bench gpu): report round 2
            for name, run in runs.items():
                decoded[name] = decode_figures(run, args.decode)
                print(name, json.dumps(decoded[name]), flush=True)
        results.append({"decode": decoded})
    print("\n".join(registers()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "config": [spqr.GEMV_ROWS, spqr.GEMV_INPUTS, spqr.GEMV_WARPS],
                       "results": results}, f, indent=1)
    results = [row for row in results if "shape" in row]
    for row in results:
        if "sweep" in row:
            best = sorted(row["sweep"].items(), key=lambda kv: kv[1])
            print(row["shape"], "sweep (graph µs):", ", ".join(f"{k}: {v:.1f}" for k, v in best))
    print(f"{'shape':>11} {'MB layout/format/dense':>23} {'floor µs':>16} | µs graph / do_bench: "
          + " | ".join(["dense fp16", *kernels, "ours, no outliers"]))
    for row in results:
        mb = "/".join(f"{row[k + '_bytes'] / 1e6:.1f}" for k in ("layout", "format", "dense"))
        floor = "/".join(f"{row[k + '_floor_us']:.1f}" for k in ("layout", "format", "dense"))
        cells = [f"{row[k]['graph_us']:.1f}/{row[k].get('do_bench_us', float('nan')):.1f}"
                 for k in ("dense fp16", *kernels, "ours, no outliers")]
        print(f"{row['shape']:>11} {mb:>23} {floor:>16} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
