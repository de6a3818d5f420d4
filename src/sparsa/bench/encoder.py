"""``sparsa bench encoder``: all-MiniLM-L6-v2 sentence-embedding latency, dense against block-sparse.

Every variant maps the same token ids ``[B, seqlen]`` (held-out wiki sentences padded or
truncated to exactly ``seqlen`` tokens) to unit sentence embeddings ``[B, 384]`` (encoder,
masked mean, L2 norm; tokenization excluded). Peers, all in one process:

* dense torch fp32: the Hugging Face ``BertModel``;
* onnxruntime fp32: the same dense model exported to ONNX (pooling included), run by
  onnxruntime with as many intra-op threads as torch uses;
* ours: the model pruned to 16x1 blocks (the faster shape of the fp32 block kernel) at each
  sparsity by gradual pruning with embedding distillation (:mod:`sparsa.compress.recover_encoder`,
  run here, on the wiki calibration sentences), its linears on the numba block-sparse kernel.

Timing is round-robin over the variants, ``rounds`` times, median of rounds. Each variant's
embeddings of the held-out sentences, computed through the timed path, are compared with
dense torch's: cosine (mean, min) and top-k neighbour overlap.
"""

import copy
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsa.bench.results import batch_bars, machine, write_results
from sparsa.bench.timing import median, round_robin, time_call
from sparsa.compress.recover import RecoverConfig
from sparsa.compress.recover_encoder import recover_encoder_
from sparsa.data.sentences import corpus_sentences
from sparsa.evaluate.embeddings import embedding_agreement
from sparsa.nn.encoders import MINILM, Encoder, MeanPooled, load_encoder, tokenize_fixed

Run = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # {input_ids, attention_mask} [B, T] -> [B, H]
DENSE, ORT = "dense torch fp32", "onnxruntime fp32"
GOAL_SPEEDUP, GOAL_COSINE, GOAL_SPARSITY, GOAL_BATCH = 2.5, 0.9, 0.9, 8  # the goal


@dataclass(frozen=True)
class EncoderSettings:
    """Model, batches and sequence length, sparsities, recovery, held-out sentences, timing.

    Attributes:
        seqlen: tokens per sequence, every sequence padded or truncated to exactly this.
        recover_steps, recover_lr, recover_batch_size: recovery (see ``RecoverConfig``) per sparsity.
        held_out: wiki evaluation-split sentences the agreement with dense is measured on.
        k: neighbours compared in the top-k overlap.
        rounds: round-robin timing rounds; min_seconds: each timing repeats calls this long.
    """

    model: str = MINILM
    batches: tuple[int, ...] = (1, 8)
    seqlen: int = 128
    sparsities: tuple[float, ...] = (0.7, 0.8, 0.9)
    block: tuple[int, int] = (16, 1)
    recover_steps: int = 300
    recover_lr: float = RecoverConfig.lr
    recover_batch_size: int = 16
    held_out: int = 512
    k: int = 10
    rounds: int = 7
    min_seconds: float = 0.2
    calib: str = "wiki"
    seed: int = 0

    @classmethod
    def quick(cls) -> "EncoderSettings":
        return cls(sparsities=(0.9,), recover_steps=60, held_out=128, rounds=3)


def torch_run(model: torch.nn.Module) -> Run:
    pooled = MeanPooled(model).eval()

    @torch.inference_mode()
    def run(batch):
        return pooled(batch["input_ids"], batch["attention_mask"])

    return run


def onnxruntime_run(model: torch.nn.Module, example: dict[str, torch.Tensor], workdir: Path) -> Run | str:
    """The dense model exported to ONNX and run by onnxruntime; a string says why it cannot run."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime==1.31.1)"
    path = workdir / "encoder.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(MeanPooled(model).eval(), (example["input_ids"], example["attention_mask"]),
                              str(path), dynamo=False, input_names=["input_ids", "attention_mask"],
                              output_names=["embedding"], dynamic_axes={"input_ids": {0: "batch"},
                                                                        "attention_mask": {0: "batch"},
                                                                        "embedding": {0: "batch"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the peer's own failure is the result to report
        return f"ONNX export or session failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

    def run(batch):
        feeds = {name: batch[name].numpy() for name in ("input_ids", "attention_mask")}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def embeddings(run: Run, inputs: dict[str, torch.Tensor], batch_size: int = 8) -> torch.Tensor:
    """[n, H] embeddings of all ``inputs`` rows through ``run``, ``batch_size`` rows at a time."""
    n = inputs["input_ids"].shape[0]
    return torch.cat([run({k: v[i:i + batch_size] for k, v in inputs.items()}) for i in range(0, n, batch_size)])


def recovered(dense: Encoder, sparsity: float, calib: list[str], s: EncoderSettings, progress: bool):
    """A copy of ``dense`` pruned to ``sparsity`` with recovery, and what recovery reported."""
    student = Encoder(copy.deepcopy(dense.model), dense.tokenizer, dense.source)
    config = RecoverConfig(sparsity=sparsity, block=s.block, steps=s.recover_steps, lr=s.recover_lr,
                           batch_size=s.recover_batch_size, seed=s.seed)
    summary = recover_encoder_(student, config, sentences=calib, teacher=dense.model, max_length=s.seqlen,
                               progress=progress)
    return student.model, {"steps": config.steps, "lr": config.lr, "final_loss": summary.losses[-1],
                           "kept_blocks": summary.kept_blocks, "total_blocks": summary.total_blocks}


def time_variants(runs: dict[str, Run], inputs: dict[str, torch.Tensor], s: EncoderSettings) -> dict[str, dict]:
    """ms per call of every variant at every batch size: round-robin rounds, median."""
    ms = {name: {} for name in runs}
    for b in s.batches:
        batch = {k: v[:b] for k, v in inputs.items()}
        samples = round_robin({name: (lambda run=run: time_call(lambda: run(batch), s.min_seconds))
                               for name, run in runs.items()}, s.rounds)
        for name in runs:
            ms[name][str(b)] = median(samples[name]) * 1e3
    return ms


def goal(rows: list[dict]) -> dict:
    """The issue's goal, checked on the measured rows (None when the goal's row was not run)."""
    name = f"ours block {GOAL_SPARSITY:.0%}"
    row = next((r for r in rows if r["variant"] == name and "skipped" not in r), None)
    if row is None or str(GOAL_BATCH) not in row["x_dense"]:
        return {"variant": name, "met": None}
    speedup, cosine = row["x_dense"][str(GOAL_BATCH)], row["agreement"]["cosine_mean"]
    return {"variant": name, "batch": GOAL_BATCH, "speedup": speedup, "cosine_mean": cosine,
            "met": speedup >= GOAL_SPEEDUP and cosine >= GOAL_COSINE}


def markdown(payload: dict) -> str:
    m, s, g = payload["machine"], payload["settings"], payload["goal"]
    batches = [str(b) for b in s["batches"]]
    lines = [f"# encoder: {s['model']} sentence embeddings, dense against block-sparse after recovery", "",
             f"Measured {m['date']} on a {m['cores']}-core {m['cpu']} CPU (torch {m['torch']}, {m['threads']} "
             f"torch threads, {m['numba_threads']} numba threads), every variant in one process, round-robin, median "
             f"of {s['rounds']} rounds. Sequences padded or truncated to exactly {s['seqlen']} tokens; ms from token "
             "ids to unit embeddings (tokenization excluded). `x dense`: dense torch ms / variant ms. Ours: "
             f"{s['block'][0]}x{s['block'][1]} blocks pruned gradually over {s['recover_steps']} steps "
             f"(lr {s['recover_lr']:g}, {s['recover_batch_size']} sentences per step) while distilling the dense "
             f"embeddings on {s['calib']} calibration sentences. Agreement with dense torch on {s['held_out']} "
             f"held-out {s['calib']} evaluation-split sentences: cosine mean / min, top-{s['k']} neighbour overlap.",
             ""]
    if payload["quick"]:
        lines += [f"**Quick run**: sparsities {', '.join(f'{x:.0%}' for x in s['sparsities'])} only, "
                  f"{s['recover_steps']} recovery steps, {s['rounds']} rounds; not the full protocol.", ""]
    lines += ["| variant | " + " | ".join(f"ms (batch {b}) | x dense" for b in batches)
              + f" | cosine mean | cosine min | top-{s['k']} overlap |",
              "|---|" + "---|---|" * len(batches) + "---|---|---|"]
    for r in payload["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | " + " | ".join("n/a | n/a" for _ in batches)
                         + f" | not run: {r['skipped']} | | |")
            continue
        a = r["agreement"]
        cells = [f"{r['ms'][b]:.1f} | {r['x_dense'][b]:.2f}x" for b in batches]
        lines.append(f"| {r['variant']} | " + " | ".join(cells)
                     + f" | {a['cosine_mean']:.4f} | {a['cosine_min']:.4f} | {a['topk_overlap']:.3f} |")
    verdict = ("not measured (its row was not run)" if g["met"] is None else
               f"{'met' if g['met'] else 'NOT met'}: {g['speedup']:.2f}x at batch {g['batch']}, "
               f"cosine {g['cosine_mean']:.4f}")
    lines += ["", f"Goal: {g['variant']} at batch {GOAL_BATCH} at least {GOAL_SPEEDUP}x faster than dense torch "
                  f"with embedding cosine at least {GOAL_COSINE}: {verdict}."]
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    """ms per batch for every variant that ran (log scale)."""
    return batch_bars(payload, "ms", f"ms per batch ({payload['settings']['seqlen']} tokens each)",
                      f"{payload['settings']['model']}: sentence embeddings")


def run_encoder(s: EncoderSettings, *, out_dir="bench/results", name: str = "encoder", quick: bool = False,
                progress: bool = True) -> dict:
    """Recover every sparsity, time every variant, write ``<name>.{json,md,png}``."""
    import numba

    dense = load_encoder(s.model)
    calib, held_out = corpus_sentences(s.calib, s.held_out)
    inputs = tokenize_fixed(dense, held_out, s.seqlen)  # [held_out, seqlen] each
    runs: dict[str, Run] = {DENSE: torch_run(dense.model)}
    rows: dict[str, dict] = {DENSE: {"variant": DENSE}}
    with tempfile.TemporaryDirectory() as tmp:
        ort = onnxruntime_run(dense.model, {k: v[:2] for k, v in inputs.items()}, Path(tmp))
        if isinstance(ort, str):
            rows[ORT] = {"variant": ORT, "skipped": ort}
        else:
            runs[ORT], rows[ORT] = ort, {"variant": ORT}
        for sparsity in tqdm(s.sparsities, desc="bench encoder: recover", disable=not progress):
            name_s = f"ours block {sparsity:.0%}"
            model, recovery = recovered(dense, sparsity, calib, s, progress)
            runs[name_s], rows[name_s] = torch_run(model), {"variant": name_s, "sparsity": sparsity,
                                                            "recovery": recovery}
        reference = embeddings(runs[DENSE], inputs)
        for variant, run in runs.items():
            rows[variant]["agreement"] = embedding_agreement(reference, embeddings(run, inputs), k=s.k).to_dict()
        ms = time_variants(runs, inputs, s)
    for variant, times in ms.items():
        rows[variant]["ms"] = times
        rows[variant]["x_dense"] = {b: ms[DENSE][b] / t for b, t in times.items()}
    payload = {"settings": asdict(s), "quick": quick,
               "machine": {**machine("cpu"), "threads": torch.get_num_threads(),
                           "numba_threads": numba.get_num_threads()},
               "rows": list(rows.values())}
    payload["goal"] = goal(payload["rows"])
    write_results(out_dir, name, payload, markdown(payload), figure(payload))
    return payload
