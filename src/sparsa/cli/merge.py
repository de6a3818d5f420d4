"""``sparsa merge CONFIG.yaml -o DIR``: mergekit-style merges and T-Switch compressed task vectors."""


def cmd_merge(args) -> dict:
    from sparsa.merge.pipeline import merge_from_yaml

    return merge_from_yaml(args.config, args.out, force=args.force, progress=not args.quiet)


def merge_table(r: dict) -> str:
    lines = [f"wrote {r['out']} ({r['merge_method']})"]
    for task, info in r.get("tasks", {}).items():
        lines.append(f"  {task:<20} {info['nbytes']:>10} bytes  {info['bits_per_param']:.3f} bits/param")
    if "params" in r:
        lines.append(f"  {r['tensors']} tensors, {r['params']} parameters")
    return "\n".join(lines)


def add_merge(sub, common) -> None:
    p = sub.add_parser("merge", parents=[common],
                       help="merge fine-tunes of one base (mergekit-style YAML): tswitch, task_arithmetic, ties, dare")
    p.add_argument("config", help="YAML: merge_method, base_model, models (model, name, parameters), parameters, dtype")
    p.add_argument("-o", "--out", required=True,
                   help="output directory: created, or replaced when it is an earlier merge output")
    p.add_argument("--force", action="store_true",
                   help="replace -o even when it holds files sparsa did not write (default: refuse)")
    p.set_defaults(run=cmd_merge, table=merge_table)


def cmd_merge_eval(args) -> dict:
    from sparsa.merge.pipeline import evaluate_bank

    return evaluate_bank(args.dir)


def merge_eval_table(r: dict) -> str:
    lines = [f"{r['dir']} ({r['merge_method']}, {r['file_bytes']} bytes on disk)"]
    for task, t in r["tasks"].items():
        lines.append(f"  {task:<20} {t['nbytes']:>10} bytes  {t['bits_per_param']:.3f} bits/param  "
                     f"rel_err {t['rel_err']:.4f}  cosine {t['cosine']:.4f}")
    return "\n".join(lines)


def add_merge_eval(sub, common) -> None:
    p = sub.add_parser("merge-eval", parents=[common],
                       help="a T-Switch bank's bytes per task and fidelity to each fine-tuned task vector")
    p.add_argument("dir", help="a directory written by sparsa merge with merge_method tswitch")
    p.set_defaults(run=cmd_merge_eval, table=merge_eval_table)
