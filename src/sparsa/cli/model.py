"""``sparsa eval``, ``compress``, ``generate`` and ``demo``: the commands on language models."""

import argparse

from sparsa.cli._common import (DEVICE_HELP, DTYPES, add_attention_flags, add_bos_flag, check_device, number,
                                torch_dtype, use_attention)
from sparsa.errors import SparsaError


def cmd_eval(args) -> dict:
    from functools import partial

    from sparsa.evaluate.report import evaluate_model

    check_device(args.device)
    return evaluate_model(args.model, ppl=args.ppl, text_file=args.text_file, seqlen=args.seqlen, windows=args.windows,
                          bos=args.bos, dtype=torch_dtype(args.dtype), device=args.device,
                          prepare=partial(use_attention, args=args), progress=not args.quiet)


def eval_table(r: dict) -> str:
    rows = [f"model          {r['model']}"]
    rows += [f"ppl {k:<10} {v:.4f}   ({r['windows'][k]} windows x {r['seqlen']} tokens)" for k, v in r["ppl"].items()]
    rows += [f"bits/param     {r['bits_per_param']:.3f}", f"linear bytes   {r['bytes']:,} ({r['params']:,} params)",
             f"bos            {bos_text(r['bos'])}"]
    return "\n".join(rows)


def bos_text(bos: dict) -> str:
    """A results file's ``bos`` record in words."""
    if not bos["added"]:
        return f"{bos['protocol']} (no BOS token added)"
    where = "opens every window" if bos["protocol"] == "auto" else "opens the whole text only"
    return f"{bos['protocol']} (BOS token {bos['token_id']} {where})"


def cmd_compress(args) -> dict:
    from sparsa.compress import get_method
    from sparsa.compress.pipeline import compress_checkpoint, recover_checkpoint

    config = get_method(args.method).config_cls.from_flags(
        bits=args.bits, group_size=args.group_size, sparsity=args.sparsity, pattern=args.pattern,
        outlier_threshold=args.outlier_threshold, nsamples=args.nsamples, seqlen=args.seqlen,
        calib=None if args.recover else args.calib,
        percdamp=args.percdamp, act_order=args.act_order, static_groups=args.static_groups, symmetric=args.symmetric, grid=args.grid,
        error_feedback=args.error_feedback,
        simplified_outliers=args.simplified_outliers, stat_bits=args.stat_bits, stat_group_size=args.stat_group_size,
        budget=args.budget)
    check_device(args.device)
    if args.recover:
        if args.head:  # given as --head
            raise SparsaError("--head applies to causal LMs; --recover prunes an encoder, which has no output head")
        return recover_checkpoint(args.model, config, args.output, seed=args.seed, steps=args.recover_steps,
                                  lr=args.recover_lr, calib=args.calib, device=args.device, force=args.force,
                                  progress=not args.quiet).to_dict()
    if args.recover_steps is not None or args.recover_lr is not None:
        raise SparsaError("--recover-steps and --recover-lr apply only with --recover")
    return compress_checkpoint(args.model, config, args.output, seed=args.seed, device=args.device, head=args.head,
                               bos=args.bos, dtype=torch_dtype(args.dtype), force=args.force,
                               progress=not args.quiet).to_dict()


def compress_table(r: dict) -> str:
    from sparsa.compress.pipeline import CheckpointSummary

    return CheckpointSummary(**r).brief()


def cmd_generate(args) -> dict:
    from functools import partial

    from sparsa.nn.generate import generate

    check_device(args.device)
    return generate(args.model, args.prompt, max_new_tokens=args.max_new_tokens, device=args.device,
                    dtype=torch_dtype(args.dtype), prepare=partial(use_attention, args=args)).to_dict()


def generate_table(r: dict) -> str:
    from sparsa.nn.generate import GenerateSummary

    return GenerateSummary(r["text"], r["new_tokens"], r["tokens_per_s"]).brief()


def cmd_demo(args) -> dict:
    from sparsa.demo import run_demo

    return {"rows": run_demo(ppl=args.ppl, seqlen=args.seqlen, windows=args.windows, nsamples=args.nsamples,
                             calib_seqlen=args.calib_seqlen, bos=args.bos, out_dir=args.out,
                             progress=not args.quiet)}


def demo_table(r: dict) -> str:
    names = list(r["rows"][0]["ppl"])
    head = f"{'model':<40}" + "".join(f"{'ppl ' + n:>16}" for n in names) + f"{'bytes':>14}{'bits/param':>12}{'compress s':>12}"
    lines = [head, "-" * len(head)]
    for row in r["rows"]:
        lines.append(f"{row['model']:<40}" + "".join(f"{row['ppl'][n]:>16.3f}" for n in names)
                     + f"{row['bytes']:>14,}{row['bits_per_param']:>12.3f}"
                     + ("           -" if row["seconds"] is None else f"{row['seconds']:>12.1f}"))
    return "\n".join(lines)


def cmd_export(args) -> dict:
    from sparsa.nn.gguf_export import export_gguf

    return export_gguf(args.checkpoint, args.out, dense_type=args.dense_type,
                       dequantize_unsupported=args.dequantize_unsupported, force=args.force).to_dict()


def export_table(r: dict) -> str:
    from sparsa.nn.gguf_export import ExportSummary

    return ExportSummary(**r).brief()


def add_export(sub, common) -> None:
    from sparsa.nn.gguf_export import DENSE_TYPES

    p = sub.add_parser("export", parents=[common], help="write a checkpoint as a GGUF file llama.cpp runs")
    p.add_argument("checkpoint", help="a sparsa checkpoint directory (best: --method rtn/gptq with --grid)")
    p.add_argument("--to", choices=("gguf",), required=True, help="the file format (gguf)")
    p.add_argument("-o", "--out", required=True, help="the file to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace -o if it is an existing file")
    p.add_argument("--dense-type", choices=DENSE_TYPES, default="auto",
                   help="ggml type of the dense matrices (embeddings, uncompressed layers): auto keeps the stored "
                        "dtype, so the file decodes to the checkpoint's exact weights; q8_0 quantizes them as "
                        "llama-quantize does a tied embedding (default %(default)s)")
    p.add_argument("--dequantize-unsupported", choices=DENSE_TYPES[1:3],
                   help="write weights no ggml type holds (SpQR, sparse formats) dense in this type "
                        "(default: stop, naming the first)")
    p.set_defaults(run=cmd_export, table=export_table)


def add_eval(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="perplexity and size of a model")
    p.add_argument("model", help="smollm2-135m, a .gguf file, a Hugging Face dir or a sparsa checkpoint")
    p.add_argument("--ppl", help="comma-separated corpora: wiki, shakespeare (default: wiki)")
    p.add_argument("--text-file", help="also evaluate this UTF-8 text file, whole")
    p.add_argument("--seqlen", type=number(int, 2), default=2048, help="tokens per window (default %(default)s tokens)")
    p.add_argument("--windows", type=number(int, 1), help="evaluate at most N windows (default: all)")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="dtype for dense models (default float32)")
    add_bos_flag(p, "evaluation windows")
    add_attention_flags(p)
    p.set_defaults(run=cmd_eval, table=eval_table)


def add_compress(sub, common) -> None:
    from sparsa.compress.recover import RecoverConfig

    p = sub.add_parser("compress", parents=[common], help="compress a model and write a checkpoint")
    p.add_argument("model", help="the dense model: smollm2-135m, a .gguf file or a Hugging Face dir "
                                 "(with --recover: all-minilm-l6-v2 or a sentence-encoder dir)")
    p.add_argument("-o", "--output", required=True,
                   help="checkpoint directory to write: created, or replaced when it is an earlier checkpoint")
    p.add_argument("--force", action="store_true",
                   help="replace -o even when it holds files sparsa did not write (default: refuse)")
    p.add_argument("--method", required=True,
                   help="rtn, gptq, spqr (quantize); magnitude, wanda, sparsegpt (prune); auto (per-layer choice)")
    p.add_argument("--bits", type=int, help="bits per weight code, 2..8 (rtn, gptq: 4; spqr: 3)")
    p.add_argument("--group-size", type=int,
                   help="input columns per quantization group (rtn, gptq: 128, 0 = whole row; spqr: 16)")
    p.add_argument("--sparsity", type=float, help="fraction of weights removed, in [0, 1) (default 0.5)")
    p.add_argument("--pattern", help="unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:1x16)")
    p.add_argument("--nsamples", type=int, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, help="tokens per calibration window (default 2048)")
    p.add_argument("--calib", help="calibration corpus: wiki (default) or shakespeare")
    add_bos_flag(p, "calibration windows")
    p.add_argument("--percdamp", type=float, help="Hessian dampening, share of mean diag (gptq etc. 0.01; spqr: recipe)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="solve columns by decreasing Hessian diagonal (gptq, spqr; default on)")
    p.add_argument("--error-feedback", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: spread each column's rounding error over the columns not yet quantized (default on); "
                        "off, weights round on their grids alone and calibration only shapes the grids")
    p.add_argument("--static-groups", action="store_true", default=None,
                   help="gptq: fit group grids on the original weights (implied by act-order with groups)")
    p.add_argument("--symmetric", action="store_true", default=None,
                   help="rtn, gptq: symmetric grids with no stored minimum, GGUF Q4_0's rule "
                        "(4.5 bits/param at --bits 4 --group-size 32)")
    p.add_argument("--grid", help="rtn, gptq: quantize on a ggml block type's grid exactly, for sparsa export --to gguf: "
                                  "q4_0, q4_1, q5_0, q5_1 or q8_0 (blocks of 32; sets --bits, --group-size, --symmetric)")
    p.add_argument("--outlier-threshold", type=float, help="spqr: outlier threshold tau (default: recipe)")
    p.add_argument("--simplified-outliers", action="store_true", default=None,
                   help="spqr: skip the leave-one-out refit (faster, worse)")
    p.add_argument("--stat-bits", type=int, help="spqr: bits of the second-level statistics (default 3)")
    p.add_argument("--stat-group-size", type=int, help="spqr: rows per second-level group (default 16)")
    p.add_argument("--budget", type=float, help="auto: bits/param budget over the compressed layers (default 3.5)")
    p.add_argument("--recover", action="store_true",
                   help="sentence encoders (all-minilm-l6-v2): prune blocks gradually while distilling the dense "
                        "embeddings on calibration sentences (--method magnitude --pattern block:RxC)")
    p.add_argument("--recover-steps", type=number(int, 1),
                   help=f"--recover: optimizer steps (default {RecoverConfig.steps} steps)")
    p.add_argument("--recover-lr", type=number(float, 0, low_open=True),
                   help=f"--recover: AdamW learning rate (default {RecoverConfig.lr:g})")
    p.add_argument("--head", action=argparse.BooleanOptionalAction, default=None,
                   help="compress the output head too (lm_head, untied from the embeddings; calibrated methods see "
                        "the final norm's outputs). Default: on for the quantizers (rtn, gptq, spqr), off for the "
                        "pruning methods and auto; --no-head keeps it dense")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP}, calibrated methods only (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the dense model first (values keep this dtype)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration windows and of --recover's batches (default %(default)s)")
    p.set_defaults(run=cmd_compress, table=compress_table)


def add_generate(sub, common) -> None:
    p = sub.add_parser("generate", parents=[common], help="greedy generation and tokens/s")
    p.add_argument("model", help="smollm2-135m, a .gguf file, a Hugging Face dir or a sparsa checkpoint")
    p.add_argument("--prompt", required=True,
                   help="the text to continue (its tokens plus --max-new-tokens must fit the model's context)")
    p.add_argument("--max-new-tokens", type=number(int, 1), default=64,
                   help="tokens to generate, greedily (default %(default)s tokens)")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="dtype for dense models (default float32)")
    add_attention_flags(p)
    p.set_defaults(run=cmd_generate, table=generate_table)


def add_demo(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="the main job on the embedded model")
    p.add_argument("--ppl", default="wiki,shakespeare",
                   help="comma-separated corpora to evaluate: wiki, shakespeare (default %(default)s)")
    p.add_argument("--seqlen", type=number(int, 2), default=512,
                   help="tokens per evaluation window (default %(default)s tokens)")
    p.add_argument("--windows", type=number(int, 1), default=16,
                   help="evaluation windows per corpus at most (default %(default)s windows)")
    p.add_argument("--nsamples", type=number(int, 1), default=16,
                   help="calibration windows (default %(default)s windows: demo-sized)")
    p.add_argument("--calib-seqlen", type=number(int, 2), default=512,
                   help="tokens per calibration window (default %(default)s tokens)")
    add_bos_flag(p, "calibration and evaluation windows")
    p.add_argument("--out", help="also write the table, settings and machine to OUT/demo.{json,md} "
                                 "(default: not written; make demo writes bench/results)")
    p.set_defaults(run=cmd_demo, table=demo_table)
