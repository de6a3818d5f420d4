"""``sparsa attention ...``: AnchorAttention on a model's real attention, and its kernel benchmark."""

from sparsa.cli._common import DEVICE_HELP, number


def attention_config(args):
    from sparsa.attention.config import AnchorConfig

    return AnchorConfig(theta=args.theta, identify=args.identify, block_m=args.block_m, step=args.step,
                        init=args.init, window=args.window)


def cmd_attention_eval(args) -> dict:
    from sparsa.bench.attention_sweep import evaluate_anchor
    from sparsa.cli._common import check_device

    check_device(args.device)
    return evaluate_anchor(args.model, attention_config(args), seqlen=args.seqlen, text_file=args.text_file,
                           device=args.device, sweep=args.sweep, out=args.out, baselines=not args.no_baselines,
                           layers=args.layers, progress=not args.quiet)


def attention_eval_table(r: dict) -> str:
    from sparsa.attention.summary import AttentionEvalSummary

    return AttentionEvalSummary.from_dict(r).brief()


def cmd_attention_bench(args) -> dict:
    from sparsa.bench.attention import AttentionBenchSettings, run_attention_bench

    from dataclasses import replace

    settings = AttentionBenchSettings.quick() if args.quick else AttentionBenchSettings()
    settings = replace(settings, config=replace(settings.config, identify=args.identify))
    name = "attention_quick" if args.quick else "attention"
    payload = run_attention_bench(settings, out_dir=args.out, name=name, progress=not args.quiet)
    if "skipped" in payload:
        return {"skipped": payload["skipped"]}
    return {"out": args.out, "name": name, "rows": payload["rows"]}


def attention_bench_table(r: dict) -> str:
    from sparsa.attention.summary import AttentionBenchSummary

    return AttentionBenchSummary(**r).brief()


def add_attention(sub, common, parser_class) -> None:
    """The ``sparsa attention`` subcommands (``parser_class``: the CLI's error-reporting parser)."""
    from sparsa.attention.config import IDENTIFY, AnchorConfig
    from sparsa.bench.attention_sweep import SWEEP_THETAS

    d = AnchorConfig()
    p = sub.add_parser("attention", parents=[common], help="AnchorAttention: stripe-sparse long-context prefill")
    cmds = p.add_subparsers(dest="attention", required=True, parser_class=parser_class)
    p = cmds.add_parser("eval", parents=[common],
                        help="recall, density and output error on the model's real attention, against baselines")
    p.add_argument("model", help="smollm2-135m, a .gguf file, a Hugging Face dir or a sparsa checkpoint")
    p.add_argument("--seqlen", type=number(int, 2), default=4096, help="tokens of text (default %(default)s tokens)")
    p.add_argument("--theta", type=float, default=d.theta, help=f"threshold, natural-log units (default {d.theta:g})")
    p.add_argument("--identify", choices=IDENTIFY, default=d.identify,
                   help=f"stripe identification: rows (each row against its anchor) or pooled (tile means, the "
                        f"paper's) (default {d.identify})")
    p.add_argument("--block-m", type=int, default=d.block_m, help=f"query rows per tile (default {d.block_m} rows)")
    p.add_argument("--step", type=int, default=d.step, help=f"tiles per stripe group (default {d.step})")
    p.add_argument("--init", type=int, default=d.init, help=f"initial keys always attended (default {d.init} keys)")
    p.add_argument("--window", type=int, default=d.window,
                   help=f"keys before each group always attended (default {d.window} keys)")
    p.add_argument("--text-file", help="a UTF-8 text file instead of the wiki evaluation split")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines and the recall bounds (per-row top-k, optimum; faster)")
    p.add_argument("--layers", action="store_true", help="include per-layer metrics in the output")
    p.add_argument("--sweep", action="store_true",
                   help=f"also theta in {', '.join(f'{t:g}' for t in SWEEP_THETAS)}: writes "
                        "attention_sweep.{json,md,png} (recall against density) under --out")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--out", default="bench/results", help="where --sweep writes (default bench/results)")
    p.set_defaults(run=cmd_attention_eval, table=attention_eval_table)
    p = cmds.add_parser("bench", parents=[common], help="kernel latency against SDPA, 8k to 128k tokens (CUDA)")
    p.add_argument("--quick", action="store_true", help="8k and 32k only (written as attention_quick)")
    p.add_argument("--identify", choices=IDENTIFY, default=d.identify,
                   help=f"stripe identification rule to time (default {d.identify})")
    p.add_argument("--out", default="bench/results", help="results directory (default bench/results)")
    p.set_defaults(run=cmd_attention_bench, table=attention_bench_table)
