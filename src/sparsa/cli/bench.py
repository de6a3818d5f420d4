"""``sparsa bench ...``: the benchmark subcommands, each a thin call into :mod:`sparsa.bench`.

Every command writes ``bench/results/<name>.{json,md,png}`` and returns the JSON the CLI
prints with ``--json`` (a table otherwise).
"""

from sparsa.cli._common import DEVICE_HELP, number


def chosen(settings_class, name: str, quick: bool):
    """``(settings, results name)``: the class's ``quick()`` settings and ``<name>_quick``, or its defaults
    and ``name``."""
    return (settings_class.quick(), f"{name}_quick") if quick else (settings_class(), name)


def cmd_bench_quality(args) -> dict:
    from sparsa.bench.quality import QualitySettings, run_quality
    from sparsa.cli._common import check_device

    check_device(args.device)
    settings = QualitySettings(model=args.model, nsamples=args.nsamples, calib_seqlen=args.calib_seqlen,
                               calib=args.calib, seqlen=args.seqlen, windows=args.windows, ppl=args.ppl,
                               bos=args.bos, device=args.device, seed=args.seed)
    only = [r.strip() for r in args.rows.split(",")] if args.rows else None
    payload = run_quality(settings, only=only, out_dir=args.out, progress=not args.quiet)
    return {"out": args.out, "bos": payload["bos"], "rows": payload["rows"]}


def cmd_bench_spmm(args) -> dict:
    from sparsa.bench.spmm import SpmmSettings, run_spmm

    settings, name = chosen(SpmmSettings, "spmm", args.quick)
    payload = run_spmm(settings, out_dir=args.out, name=name, progress=not args.quiet)
    return {"out": args.out, "quick": args.quick, "ratios": payload["ratios"],
            "ms": [{"case": r["case"], **c["ms"]} for r, c in zip(payload["ratios"], payload["cases"])],
            "skipped": {n: why for c in payload["cases"] for n, why in c["skipped"].items()}}


def bench_spmm_table(r: dict) -> str:
    lines = [f"wrote {r['out']}/{'spmm_quick' if r['quick'] else 'spmm'}.{{json,md,png}}"]
    for case in r["ratios"]:
        best = {k: v for k, v in case.items() if k != "case" and k.endswith("/ dense fp32")}
        lines.append(f"{case['case']:<36} " + "  ".join(f"{k.removesuffix(' / dense fp32')} {v:.2f}x"
                                                         for k, v in best.items()))
    lines += [f"not run: {n}: {why}" for n, why in r["skipped"].items()]
    return "\n".join(lines)


def cmd_bench_decode(args) -> dict:
    from dataclasses import replace

    from sparsa.bench.decode import DecodeSettings, run_decode

    settings, name = chosen(DecodeSettings, "decode", args.quick)
    payload = run_decode(replace(settings, bos=args.bos), out_dir=args.out, name=name, progress=not args.quiet)
    return {"out": args.out, "quick": args.quick, "rows": payload["rows"], "llama_cpp": payload.get("llama_cpp")}


def variant_lines(header: str, rows: list[dict], width: int, line) -> str:
    """``header``, then per row its variant padded to ``width`` and ``line(row)``, or why it did not run."""
    return "\n".join([header, *(f"{row['variant']:<{width}} "
                                + (f"not run: {row['skipped']}" if "skipped" in row else line(row)) for row in rows)])


def bench_decode_table(r: dict) -> str:
    from sparsa.bench.decode import kernel_label

    def line(row):
        speeds = "  ".join(f"{c}: {v:.1f} tok/s ({row.get('x_dense_fp32', {}).get(c, float('nan')):.2f}x)"
                           for c, v in row["tokens_per_s"].items())
        match = row.get("reference_match")
        return speeds + ("" if match is None else f"  match={match['match']}") + f"  kernel: {kernel_label(row)}"
    return variant_lines(f"wrote {r['out']}/{'decode_quick' if r['quick'] else 'decode'}.{{json,md,png}}",
                         r["rows"], 26, line)


def cmd_bench_encoder(args) -> dict:
    from dataclasses import replace

    from sparsa.bench.encoder import EncoderSettings, run_encoder

    settings = EncoderSettings.quick() if args.quick else EncoderSettings()
    if args.recover_steps is not None:
        settings = replace(settings, recover_steps=args.recover_steps)
    name = "encoder_quick" if args.quick else "encoder"
    payload = run_encoder(settings, out_dir=args.out, name=name, quick=args.quick, progress=not args.quiet)
    return {"out": args.out, "name": name, "goal": payload["goal"],
            "rows": [{k: r[k] for k in ("variant", "ms", "x_dense", "agreement", "skipped") if k in r}
                     for r in payload["rows"]]}


def bench_encoder_table(r: dict) -> str:
    def line(row):
        a = row["agreement"]
        return ("  ".join(f"batch {b}: {ms:.1f} ms ({row['x_dense'][b]:.2f}x)" for b, ms in row["ms"].items())
                + f"  cosine {a['cosine_mean']:.4f} (min {a['cosine_min']:.4f}), top-{a['k']} "
                  f"overlap {a['topk_overlap']:.3f}")
    return variant_lines(f"wrote {r['out']}/{r['name']}.{{json,md,png}}", r["rows"], 20, line)


def cmd_bench_ba(args) -> dict:
    from sparsa.bench.ba import BABenchSettings, run_ba_bench

    settings, name = chosen(BABenchSettings, "ba", args.quick)
    payload = run_ba_bench(settings, out_dir=args.out, name=name, progress=not args.quiet)
    rows = [{k: v for k, v in r.items() if k != "log"} for r in payload["rows"]]
    return {"out": args.out, "name": name, "machine": payload["machine"], "rows": rows}


def bench_ba_table(r: dict) -> str:
    lines = [f"wrote {r['out']}/{r['name']}.{{json,md,png}}"]
    for row in r["rows"]:
        lines.append(f"{row['cameras']:>5} cameras {row['observations']:>8} obs  {row['solver']:<9} {row['device']:<5}"
                     f" final cost {row['final_cost']:.10e} ({row['cost_rel_to_pycolmap']:+.1e} vs pycolmap)  "
                     f"{row['seconds']:8.3f} s ({row['speedup_over_pycolmap']:.2f}x pycolmap), "
                     + ("target not reached  " if row["seconds_to_target"] is None
                        else f"{row['seconds_to_target']:.3f} s to target  ")
                     + f"{row['iterations']} it, "
                     + ("-" if row["seconds_per_iteration"] is None else f"{row['seconds_per_iteration']:.3f}")
                     + " s/it  "
                     f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def cmd_bench_sfm(args) -> dict:
    from dataclasses import replace

    from sparsa.bench.sfm import SfmBenchSettings, run_sfm_bench

    settings, name = chosen(SfmBenchSettings, "sfm", args.quick)
    if args.sizes:
        settings = replace(settings, sizes=tuple(args.sizes))
    if args.pixel_images is not None:
        settings = replace(settings, pixel_images=args.pixel_images)
    payload = run_sfm_bench(settings, out_dir=args.out, name=name, progress=not args.quiet)
    return {"out": args.out, "name": name, "machine": payload["machine"], "rows": payload["rows"]}


def bench_sfm_table(r: dict) -> str:
    lines = [f"wrote {r['out']}/{r['name']}.{{json,md,png}}"]
    for row in r["rows"]:
        head = f"{row['kind']:<6} {row['images_truth']:>5} images  {row['solver']:<9} {row['device']:<5}"
        if "failed" in row:
            lines.append(f"{head} failed: {row['failed']} after {row['seconds']:.2f} s")
            continue
        lines.append(f"{head} registered {row['images']:>5}  rotation error {row['rotation_error_deg']['median']:.3f} deg"
                     f"  centre error {row['centre_error']['median']:.4f}  AUC@3 {row['auc']['3']:.3f}  "
                     f"{row['seconds']:8.2f} s ({row['speedup_over_pycolmap']:.2f}x pycolmap)  "
                     f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def cmd_bench_merge(args) -> dict:
    from sparsa.bench.merge import MergeBenchSettings, run_merge_bench
    from sparsa.bench.merge_lm import LMSuiteSettings
    from sparsa.nn.models import cache_root

    settings = MergeBenchSettings.quick() if args.quick else MergeBenchSettings(lm=LMSuiteSettings(bos=args.bos))
    name = "merge_quick" if args.quick else "merge"
    payload = run_merge_bench(settings, out_dir=args.out, name=name, cache_dir=cache_root() / "merge_suite",
                              progress=not args.quiet)
    out = {"out": args.out, "name": name, "params": payload["params"], "domains": payload["domains"],
           "rows": payload["rows"]}
    if "lm" in payload:
        out["lm"] = payload["lm"]
    return out


def bench_merge_table(r: dict) -> str:
    lines = [f"wrote {r['out']}/{r['name']}.{{json,md,png}} ({r['params']} parameters, {len(r['domains'])} domains)"]
    families = [("digits:", "acc", "accuracy", r["rows"])]
    if "lm" in r:
        families.append((f"language ({r['lm']['params']} tuned parameters, tasks {', '.join(r['lm']['tasks'])}):",
                         "ppl", "perplexity", r["lm"]["rows"]))
    for header, short, metric, rows in families:
        if len(families) > 1:
            lines.append(header)
        for row in rows:
            extra = f"  router {row['router_accuracy']:.3f}" if "router_accuracy" in row else ""
            lines.append(f"{row['method']:<22} {short} {row['mean_' + metric]:.4f}  normalized "
                         f"{row['mean_normalized']:.4f}  {row['bits_per_param']:7.3f} bits/param/task  "
                         f"{row['batch_ms']:.2f} ms/batch{extra}")
    return "\n".join(lines)


def cmd_bench_gpu(args) -> dict:
    from sparsa.bench.gpu import GpuSettings, run_gpu

    settings, name = chosen(GpuSettings, "gpu", args.quick)
    payload = run_gpu(settings, out_dir=args.out, name=name, progress=not args.quiet)
    if "skipped" in payload:
        return {"skipped": payload["skipped"]}
    return {"out": args.out, "name": name, "ratios": payload["ratios"], "decode": payload.get("decode"),
            "skipped": {n: why for c in payload["cases"] for n, why in c["skipped"].items()}}


def bench_gpu_table(r: dict) -> str:
    if "skipped" in r and isinstance(r["skipped"], str):
        return f"skipped: {r['skipped']}"
    lines = [f"wrote {r['out']}/{r['name']}.{{json,md,png}}"]
    for case in r["ratios"]:
        lines.append(f"{case['case']:<40} " + "  ".join(f"over {k.split(' / ')[1]} {v:.2f}x"
                                                        for k, v in case.items() if k != "case"))
    lines += [f"decode {row['variant']:<12} {row['tokens_per_s']:.1f} tok/s ({row.get('x_dense', float('nan')):.2f}x)"
              for row in r["decode"] or []]
    lines += [f"not run: {n}: {why}" for n, why in r["skipped"].items()]
    return "\n".join(lines)


def cmd_bench_gguf(args) -> dict:
    from dataclasses import replace

    from sparsa.bench.gguf import GgufBenchSettings, run_gguf_bench

    settings, name = chosen(GgufBenchSettings, "gguf", args.quick)
    if args.types:
        settings = replace(settings, types=tuple(t.strip() for t in args.types.split(",")))
    if args.autoround_tuned is not None:
        settings = replace(settings, autoround_tuned=tuple(t.strip() for t in args.autoround_tuned.split(",") if t.strip()))
    if args.autoround_iters is not None:
        settings = replace(settings, autoround_iters=args.autoround_iters)
    payload = run_gguf_bench(settings, out_dir=args.out, name=name, progress=not args.quiet)
    return {"out": args.out, "name": name, "tools_missing": payload["tools_missing"], "rows": payload["rows"],
            "speed": payload["speed"], "goals": payload["goals"]}


def bench_gguf_table(r: dict) -> str:
    lines = [f"wrote {r['out']}/{r['name']}.{{json,md}}"]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"{row['row']:<44} not run: {row['skipped']}")
            continue
        a, b = row["sparsa"], row.get("llama_perplexity") or {}
        lines.append(f"{row['row']:<44} {row['tensor_bytes']:>12,} B  ppl {a['ppl']:.3f}  KLD {a['kld_mean']:.4f}"
                     + (f"  llama-perplexity {b['ppl']:.3f} KLD {b['kld_mean']:.4f}" if b.get("kld_mean") is not None
                        else ""))
    for sp in r["speed"]:
        lines += [f"llama-bench {sp['type']} {n}: decode {v['decode_tokens_per_s']:.1f} tok/s, prefill "
                  f"{v['prefill_tokens_per_s']:.1f} tok/s" for n, v in sp["files"].items()]
    lines += [f"goal {g['type']}: {g['ours']} vs {g['theirs']}: {'met' if g['met'] else 'not met'}" for g in r["goals"]]
    return "\n".join(lines)


def bench_quality_table(r: dict) -> str:
    return f"wrote {r['out']}/quality.{{json,md,png}}\n" + "\n".join(
        f"{row['row']:<20} {row['bits_per_param']:7.3f} bits  "
        + "  ".join(f"{k} {v:.3f}" for k, v in row["ppl"].items()) for row in r["rows"])


def add_bench(sub, common, parser_class) -> None:
    """The ``sparsa bench`` subcommands (``parser_class``: the CLI's error-reporting parser)."""
    from sparsa.cli._common import add_bos_flag

    p = sub.add_parser("bench", parents=[common], help="benchmarks; results under bench/results/")
    bench = p.add_subparsers(dest="bench", required=True, parser_class=parser_class)
    p = bench.add_parser("quality", parents=[common], help="perplexity vs bits/param of every method")
    p.add_argument("--model", default="smollm2-135m",
                   help="the dense model every row starts from: smollm2-135m, a .gguf file or a Hugging Face dir "
                        "(default %(default)s)")
    p.add_argument("--nsamples", type=number(int, 1), default=128,
                   help="calibration windows (default %(default)s windows)")
    p.add_argument("--calib-seqlen", type=number(int, 2), default=2048,
                   help="tokens per calibration window (default %(default)s tokens)")
    p.add_argument("--calib", default="wiki", help="calibration corpus: wiki or shakespeare (default %(default)s)")
    p.add_argument("--seqlen", type=number(int, 2), default=2048,
                   help="tokens per evaluation window (default %(default)s tokens)")
    p.add_argument("--windows", type=number(int, 1), help="evaluate at most N windows per corpus (default: all)")
    p.add_argument("--ppl", default="wiki,shakespeare",
                   help="comma-separated corpora to evaluate: wiki, shakespeare (default %(default)s)")
    add_bos_flag(p, "calibration and evaluation windows")
    p.add_argument("--rows", help="comma-separated label fragments, e.g. 'dense,spqr' (default: all rows)")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration windows and of the compressors (default %(default)s)")
    p.add_argument("--out", default="bench/results", help="results directory (default bench/results)")
    p.set_defaults(run=cmd_bench_quality, table=bench_quality_table)
    command = results_command(bench, common)
    command("spmm", "sparse weight x activations against CPU peers",
            "3072x768 at 128 tokens and 1536x576 at 1 and 16 tokens, at 70%% and 90%% (written as spmm_quick)",
            cmd_bench_spmm, bench_spmm_table)
    command("ba", "bundle adjustment against pycolmap (Ceres) and scipy", "the 50-camera scene only (written as ba_quick)",
            cmd_bench_ba, bench_ba_table)
    p = command("sfm", "global SfM from a COLMAP database against pycolmap.global_mapping (GLOMAP)",
                "the 50-image scene only (written as sfm_quick)", cmd_bench_sfm, bench_sfm_table)
    p.add_argument("--sizes", type=number(int, 10), nargs="+", metavar="IMAGES",
                   help="ring scene sizes in images (default 50 200 1000; --quick 50)")
    p.add_argument("--pixel-images", type=number(int, 0), metavar="IMAGES",
                   help="images of the scene rendered and matched from pixels, 0 for none (default 30; --quick 0)")
    p = command("merge", "task-vector merging (T-Switch, Auto-Switch, baselines) on the offline digits suite",
                "shorter fine-tuning (written as merge_quick)", cmd_bench_merge, bench_merge_table)
    add_bos_flag(p, "language tasks' windows (full run only; --quick has no language tasks)")
    command("gpu", "Triton kernels against cuBLAS, torch BSR and 2:4 (CUDA)",
            "4096x4096 at 1 and 128 tokens, 90%% (written as gpu_quick)", cmd_bench_gpu, bench_gpu_table)
    p = command("decode", "greedy decode tokens/s, dense against compressed",
                "batch 1, 33 new tokens, dense fp32 and SpQR-3 only (written as decode_quick)", cmd_bench_decode,
                bench_decode_table)
    add_bos_flag(p, "SpQR's calibration windows")
    p = command("encoder", "MiniLM sentence-embedding latency, dense against sparse",
                "90%% sparsity only, 60 recovery steps, 3 rounds (written as encoder_quick)", cmd_bench_encoder,
                bench_encoder_table)
    p.add_argument("--recover-steps", type=number(int, 1),
                   help="recovery steps per sparsity (default 300 steps; --quick 60)")
    p = command("gguf", "GGUF exports against llama.cpp's quantizer (plain, imatrix) and auto-round: ppl, KLD, llama-bench",
                "q4_0 only, 8 calibration and 8 evaluation windows, 3 speed rounds (written as gguf_quick)",
                cmd_bench_gguf, bench_gguf_table)
    p.add_argument("--types", help="comma-separated grids, e.g. q4_0,q4_k (default q4_0,q4_k; --quick q4_0)")
    p.add_argument("--autoround-tuned", metavar="TYPES",
                   help="comma-separated types that auto-round also tunes (when benchmarked), '' for none (over an hour per type on "
                        "2 cores, cached; default q4_0; --quick none)")
    p.add_argument("--autoround-iters", type=number(int, 1),
                   help="auto-round's tuning iterations per block (default 200, its own default)")


def results_command(bench, common):
    """``command(name, help, quick_help, run, table)``: a ``sparsa bench`` subcommand with ``--quick`` and
    ``--out`` (the results directory); returns its parser for further flags."""
    def command(name: str, help: str, quick_help: str, run, table):
        p = bench.add_parser(name, parents=[common], help=help)
        p.add_argument("--quick", action="store_true", help=quick_help)
        p.add_argument("--out", default="bench/results", help="results directory (default bench/results)")
        p.set_defaults(run=run, table=table)
        return p
    return command
