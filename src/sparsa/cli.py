"""``sparsa`` command line: parses flags, calls the Python API, prints tables or ``--json``.

Errors print one ``sparsa: error: ...`` line on stderr and exit non-zero (a traceback only
with ``--debug``).
"""

import argparse
import logging
import sys
import time

from sparsa.cli_attention import add_attention
from sparsa.cli_ba import add_ba, add_sfm
from sparsa.cli_bench import add_bench
from sparsa.cli_merge import add_merge, add_merge_eval
from sparsa.cli_types import DEVICE_HELP, add_bos_flag, check_device, number
from sparsa import json_safe
from sparsa.errors import SparsaError

HELD_OUT_SENTENCES = 512  # compress --recover: wiki evaluation-split sentences its embeddings are checked on
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


class Parser(argparse.ArgumentParser):
    """argparse with the ``sparsa: error:`` one-line error format."""

    def error(self, message):
        fail(f"{self.prog}: {message}")


def fail(message: str, code: int = 2):
    print(f"sparsa: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, DTYPES[name])


def use_attention(model, args) -> dict:
    """``--attention anchor``: AnchorAttention for every prefill of ``model``; returns what to report."""
    chosen = {name: value for name in ("theta", "identify") if (value := getattr(args, name)) is not None}
    if args.attention != "anchor":
        if chosen:
            raise SparsaError(f"--{next(iter(chosen))} applies only with --attention anchor")
        return {}
    from sparsa.attention.config import AnchorConfig
    from sparsa.attention.hf import use_anchor_attention_

    config = AnchorConfig(**chosen)
    use_anchor_attention_(model, config)
    return {"attention": {"implementation": "anchor", **config.to_dict()}}


def emit(result: dict, as_json: bool, table) -> None:
    """Print ``result`` as one JSON line (NaN and inf as null, named under ``non_finite``), or as the
    human table ``table(result)`` returns."""
    print(json_safe.dumps(result) if as_json else table(result), flush=True)


# -- commands ------------------------------------------------------------------------------
def cmd_eval(args) -> dict:
    from sparsa.data.tokens import bos_for
    from sparsa.evaluate import load_texts, perplexities
    from sparsa.nn import linear_footprint
    from sparsa.nn.models import load_model

    check_device(args.device)
    texts = load_texts(args.ppl, args.text_file)
    lm = load_model(args.model, dtype=torch_dtype(args.dtype))
    lm.model.to(args.device)
    attention = use_attention(lm.model, args)
    bos = bos_for(lm.tokenizer, args.bos)
    results = perplexities(lm.model, lm.tokenizer, texts, seqlen=args.seqlen, max_windows=args.windows, bos=bos,
                           device=args.device, progress=not args.quiet)
    params, nbytes = linear_footprint(lm.model)
    return {"model": args.model, "ppl": {k: r.ppl for k, r in results.items()},
            "bits_per_param": 8 * nbytes / params, "bytes": nbytes, "params": params, "seqlen": args.seqlen,
            "bos": bos.to_dict(), "windows": {k: r.windows for k, r in results.items()},
            "predicted_tokens": {k: r.predicted_tokens for k, r in results.items()},
            "seconds": {k: round(r.seconds, 3) for k, r in results.items()}, **attention}


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
    from pathlib import Path

    import torch

    from sparsa.compress import compress_, get_method
    from sparsa.data import calibration_windows, load_corpus, tokenize
    from sparsa.data.tokens import bos_for
    from sparsa.atomic import CHECKPOINT, check_output_dir
    from sparsa.nn.checkpoint import save_checkpoint
    from sparsa.nn.models import load_model
    from sparsa.nn.surgery import all_linears, decoder_linears

    config = get_method(args.method).config_cls.from_flags(
        bits=args.bits, group_size=args.group_size, sparsity=args.sparsity, pattern=args.pattern,
        outlier_threshold=args.outlier_threshold, nsamples=args.nsamples, seqlen=args.seqlen,
        calib=None if args.recover else args.calib,
        percdamp=args.percdamp, act_order=args.act_order, static_groups=args.static_groups, symmetric=args.symmetric,
        simplified_outliers=args.simplified_outliers, stat_bits=args.stat_bits, stat_group_size=args.stat_group_size,
        budget=args.budget)
    check_device(args.device)
    if args.recover:
        if args.head:  # given as --head
            raise SparsaError("--head applies to causal LMs; --recover prunes an encoder, which has no output head")
        return compress_recovered(args, config)
    if args.recover_steps is not None or args.recover_lr is not None:
        raise SparsaError("--recover-steps and --recover-lr apply only with --recover")
    if args.device != "cpu" and not config.needs_calibration:
        raise SparsaError(f"--device {args.device}: --method {args.method} runs on the CPU (no calibration)")
    out = Path(args.output)
    check_output_dir(out, CHECKPOINT, force=args.force)  # before the model loads: fail fast, write nothing
    corpus = load_corpus(config.calib) if config.needs_calibration else None
    torch.manual_seed(args.seed)
    lm = load_model(args.model, dtype=torch_dtype(args.dtype))
    if lm.manifest is not None:
        raise SparsaError(f"{args.model}: already a sparsa checkpoint; compress a dense model")
    windows, bos = None, None  # bos: the calibration windows' BOS record, None without calibration
    if corpus is not None:
        rule = bos_for(lm.tokenizer, args.bos)
        windows = calibration_windows(tokenize(lm.tokenizer, corpus.calib), config.nsamples, config.seqlen,
                                      args.seed, bos=rule, source=f"{config.calib} calibration split")
        bos = rule.to_dict()
    start = time.perf_counter()
    head = config.head_by_default if args.head is None else args.head
    summary = compress_(lm.model, config, calibration=windows, device=args.device, progress=not args.quiet,
                        filter_fn=all_linears if head else decoder_linears)
    manifest = save_checkpoint(lm.model, lm.tokenizer, out,
                               method={**config.to_dict(), "seed": args.seed, "bos": bos}, force=args.force)
    return {"dir": str(out), "method": config.method, "bits_per_param": manifest["bits_per_param"],
            "bytes": manifest["bytes"], "params": manifest["params"], "layers": summary.layers, "bos": bos,
            "seconds": round(time.perf_counter() - start, 3), "head": head, "block_errors": summary.block_errors,
            **({"choices": summary.choices} if summary.choices else {})}


def compress_recovered(args, config) -> dict:
    """``compress --recover``: gradual block pruning of a sentence encoder, distilling its dense embeddings."""
    from dataclasses import asdict
    from pathlib import Path

    import torch

    from sparsa.compress.recover import RecoverConfig
    from sparsa.compress.recover_encoder import recover_encoder_
    from sparsa.data.sentences import corpus_sentences
    from sparsa.evaluate.embeddings import embedding_agreement
    from sparsa.atomic import CHECKPOINT, check_output_dir
    from sparsa.nn.checkpoint import save_checkpoint
    from sparsa.nn.encoders import check_encoder_spec, embed, load_encoder

    if args.method != "magnitude":
        raise SparsaError(f"--recover prunes blocks by magnitude while distilling; use --method magnitude, "
                          f"not {args.method}")
    if config.parsed_pattern.kind != "block":
        raise SparsaError(f"--recover needs --pattern block:RxC (e.g. block:1x16), not {config.pattern}")
    if args.device != "cpu":
        raise SparsaError(f"--device {args.device}: --recover runs on the CPU")
    check_encoder_spec(args.model)
    out = Path(args.output)
    check_output_dir(out, CHECKPOINT, force=args.force)
    recover = RecoverConfig(sparsity=config.sparsity, block=config.parsed_pattern.block, seed=args.seed,
                            **{k: v for k, v in {"steps": args.recover_steps, "lr": args.recover_lr}.items()
                               if v is not None})
    calib, held_out = corpus_sentences(args.calib or "wiki", HELD_OUT_SENTENCES)
    torch.manual_seed(args.seed)
    encoder = load_encoder(args.model)
    if encoder.manifest is not None:
        raise SparsaError(f"{args.model}: already a sparsa checkpoint; compress a dense model")
    dense = embed(encoder, held_out)
    start = time.perf_counter()
    summary = recover_encoder_(encoder, recover, sentences=calib, progress=not args.quiet)
    agreement = embedding_agreement(dense, embed(encoder, held_out))
    manifest = save_checkpoint(encoder.model, encoder.tokenizer, out,
                               method={**config.to_dict(), "recover": asdict(recover), "seed": args.seed},
                               force=args.force)
    return {"dir": str(out), "method": config.method, "bits_per_param": manifest["bits_per_param"],
            "bytes": manifest["bytes"], "params": manifest["params"], "layers": summary.layers,
            "seconds": round(time.perf_counter() - start, 3),
            "recover": {"steps": recover.steps, "lr": recover.lr, "final_loss": summary.losses[-1],
                        "calibration_sentences": len(calib), **agreement.to_dict()}}


def compress_table(r: dict) -> str:
    line = (f"wrote {r['dir']}: {r['method']}, {r['layers']} layers, {r['bits_per_param']:.3f} bits/param, "
            f"{r['bytes']:,} bytes for {r['params']:,} params, {r['seconds']:.1f} s")
    if "recover" not in r:
        return line
    a = r["recover"]
    return (f"{line}\nrecovery {a['steps']} steps: embedding cosine to dense {a['cosine_mean']:.4f} mean, "
            f"{a['cosine_min']:.4f} min; top-{a['k']} neighbour overlap {a['topk_overlap']:.3f} "
            f"({a['sentences']} held-out sentences)")


def cmd_generate(args) -> dict:
    import torch

    from sparsa.nn.lean_decode import greedy_decode
    from sparsa.nn.models import load_model

    check_device(args.device)
    if not args.prompt:
        raise SparsaError("--prompt '': empty; give the text to continue, e.g. --prompt 'Once upon a time'")
    lm = load_model(args.model, dtype=torch_dtype(args.dtype))
    lm.model.to(args.device)
    attention = use_attention(lm.model, args)
    ids = lm.tokenizer(args.prompt, return_tensors="pt").input_ids.to(args.device)
    check_context(ids.shape[1], args.max_new_tokens, lm.model.config)
    timing = {}
    if lm.model.config.model_type == "llama" and not attention:  # the lean loop: static cache, the dispatched kernels
        start = time.perf_counter()
        greedy_decode(lm.model, ids[:, :2], 2)  # compiles the kernels (once per process), untimed
        timing["warmup_s"] = round(time.perf_counter() - start, 3)
        out = greedy_decode(lm.model, ids, args.max_new_tokens)
        new_ids, seconds = out.tokens[0], out.prefill_seconds + out.decode_seconds
        timing["prefill_s"] = round(out.prefill_seconds, 4)
        if args.max_new_tokens > 1:
            timing["decode_tokens_per_s"] = out.tokens_per_s
    else:
        start = time.perf_counter()
        with torch.no_grad():
            new_ids = lm.model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)[0, ids.shape[1]:]
        seconds = time.perf_counter() - start
    eos = lm.tokenizer.eos_token_id
    ends = (new_ids == eos).nonzero() if eos is not None else new_ids.new_zeros(0, 1)
    text_ids = new_ids[: int(ends[0])] if ends.numel() else new_ids  # the text stops at end-of-sequence
    return {"text": lm.tokenizer.decode(text_ids, skip_special_tokens=True),
            "new_tokens": len(new_ids), "tokens_per_s": len(new_ids) / seconds, **timing, **attention}


def check_context(prompt_tokens: int, new_tokens: int, config) -> None:
    """SparsaError unless ``--prompt`` has tokens and prompt + ``--max-new-tokens`` fit the model's context."""
    if prompt_tokens == 0:
        raise SparsaError("--prompt: the text tokenizes to no tokens; give words the model's tokenizer knows")
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt_tokens + new_tokens > limit:
        fix = (f"lower --max-new-tokens to {limit - prompt_tokens} or shorten the prompt" if prompt_tokens < limit
               else "shorten the prompt")
        raise SparsaError(f"--prompt of {prompt_tokens} tokens + --max-new-tokens {new_tokens} = "
                          f"{prompt_tokens + new_tokens} tokens exceeds the model's context of {limit} tokens; {fix}")


def generate_table(r: dict) -> str:
    return f"{r['text']}\n\n[{r['new_tokens']} tokens, {r['tokens_per_s']:.1f} tokens/s]"


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


# -- parser ----------------------------------------------------------------------------------
def add_attention_flags(p) -> None:
    p.add_argument("--attention", choices=("sdpa", "anchor"), default="sdpa",
                   help="prefill attention: sdpa (dense, default) or anchor (AnchorAttention; decode stays dense)")
    from sparsa.attention.config import IDENTIFY, AnchorConfig

    p.add_argument("--theta", type=float,
                   help=f"--attention anchor: threshold in natural-log units (default {AnchorConfig.theta:g})")
    p.add_argument("--identify", choices=IDENTIFY,
                   help=f"--attention anchor: stripe identification rule (default {AnchorConfig.identify})")


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
    p.add_argument("--static-groups", action="store_true", default=None,
                   help="gptq: fit group grids on the original weights (implied by act-order with groups)")
    p.add_argument("--symmetric", action="store_true", default=None,
                   help="rtn, gptq: symmetric grids with no stored minimum, GGUF Q4_0's rule "
                        "(4.5 bits/param at --bits 4 --group-size 32)")
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


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser = Parser(prog="sparsa", description="Make models sparse, small and fast.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_eval, add_compress, add_generate, add_demo, add_ba, add_sfm, add_merge, add_merge_eval):
        add(sub, common)
    add_bench(sub, common, Parser)
    add_attention(sub, common, Parser)
    return parser


def quiet_libraries(debug: bool) -> None:
    """Library logs and Hugging Face progress bars only with --debug."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    if not debug:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        quiet_libraries(args.debug)
        result = args.run(args)
        if result is not None:  # None: a worker process of a distributed run, rank 0 reports
            emit(result, args.json, args.table)
    except SparsaError as err:
        if args.debug:
            raise
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001  the contract: one line, no traceback without --debug
        if args.debug:
            raise
        fail(f"{type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
