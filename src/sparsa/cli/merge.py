"""``sparsa merge CONFIG.yaml -o DIR``: mergekit-style merges and T-Switch compressed task vectors."""

import argparse


def cmd_merge(args) -> dict:
    from sparsa.merge.pipeline import merge_from_yaml

    return merge_from_yaml(args.config, args.out, force=args.force, progress=not args.quiet)


def merge_table(r: dict) -> str:
    from sparsa.merge.summary import MergeSummary

    return MergeSummary(**r).brief()


def add_merge(sub, common) -> None:
    p = sub.add_parser("merge", parents=[common],
                       help="merge fine-tunes of one base (mergekit-style YAML): tswitch, flexswitch, task_arithmetic, "
                            "ties, dare; a router: block stores an Auto-Switch router with the bank")
    p.add_argument("config", help="YAML: merge_method, base_model, models (model, name, parameters), parameters, "
                                  "dtype, router (kind, query_set, k, ...)")
    p.add_argument("-o", "--out", required=True,
                   help="output directory: created, or replaced when it is an earlier merge output")
    p.add_argument("--force", action="store_true",
                   help="replace -o even when it holds files sparsa did not write (default: refuse)")
    p.set_defaults(run=cmd_merge, table=merge_table)


def cmd_merge_eval(args) -> dict:
    from sparsa.merge.pipeline import evaluate_bank

    return evaluate_bank(args.dir, dict(args.inputs or []))


def merge_eval_table(r: dict) -> str:
    from sparsa.merge.summary import BankReport

    return BankReport(**r).brief()


def task_file(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=FILE")
    return task, path


def add_merge_eval(sub, common) -> None:
    p = sub.add_parser("merge-eval", parents=[common],
                       help="a switch bank's bytes per task and fidelity to each fine-tuned task vector; with "
                            "--inputs, routing and perplexity on given samples")
    p.add_argument("dir", help="a directory written by sparsa merge with a switch-bank method (tswitch, flexswitch)")
    p.add_argument("--inputs", action="append", type=task_file, metavar="TASK=FILE",
                   help="samples drawn from TASK (safetensors: input_ids token windows or base-model features); "
                        "scores routing (a routed bank) and perplexity (token windows); repeatable")
    p.set_defaults(run=cmd_merge_eval, table=merge_eval_table)
