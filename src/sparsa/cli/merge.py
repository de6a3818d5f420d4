"""``sparsa merge CONFIG.yaml -o DIR``: mergekit-style merges and T-Switch compressed task vectors."""

from pathlib import Path

from sparsa.errors import SparsaError

MANIFEST_VERSION = 1


def read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise SparsaError(f"{path}: cannot read the merge config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SparsaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def cmd_merge(args) -> dict:
    from sparsa.merge.config import MergeConfig
    from sparsa.merge.run import merge_models, tensorwise_methods
    from sparsa.nn.merge_io import check_output, write_merged, write_switch_bank
    from sparsa.nn.safetensors_io import LazyTensors

    path = Path(args.config)
    raw = read_yaml(path)
    config = MergeConfig.from_dict(raw, str(path), tensorwise_methods())
    check_output(Path(args.out), force=args.force)
    base = LazyTensors(config.base_model)
    models = {m.name: LazyTensors(m.model) for m in config.models}
    result = merge_models(config, base, models, progress=not args.quiet)
    manifest = {"version": MANIFEST_VERSION, "merge_method": config.merge_method, "base_model": config.base_model,
                "models": {m.name: m.model for m in config.models}, "config": raw}
    if result.compressed is not None:
        written = write_switch_bank(args.out, result.compressed, manifest, force=args.force)
        tasks = {t: {k: info[k] for k in ("nbytes", "numel", "bits_per_param")} for t, info in written["tasks"].items()}
        return {"out": args.out, "merge_method": config.merge_method, "file_bytes": written["file_bytes"],
                "tasks": tasks}
    write_merged(args.out, result.merged, manifest, base_model=config.base_model, force=args.force)
    return {"out": args.out, "merge_method": config.merge_method, "tensors": len(result.merged),
            "params": sum(t.numel() for t in result.merged.values())}


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
    from sparsa.merge.fidelity import task_vector_fidelity
    from sparsa.nn.merge_io import read_switch_bank
    from sparsa.nn.safetensors_io import LazyTensors

    manifest, bank = read_switch_bank(args.dir)
    base = LazyTensors(manifest["base_model"])
    tasks = {}
    for task, ctv in bank.items():
        row = {"nbytes": ctv.nbytes, "numel": ctv.numel, "bits_per_param": ctv.bits_per_param}
        row.update(task_vector_fidelity(base, LazyTensors(manifest["models"][task]), ctv, f"model {task!r}"))
        tasks[task] = row
    return {"dir": args.dir, "merge_method": manifest["merge_method"], "file_bytes": manifest["file_bytes"],
            "tasks": tasks}


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
