"""Compression pipelines: a dense model in, a checkpoint directory out. What ``sparsa compress``
runs, one call each:

* :func:`compress_checkpoint`: calibration windows built from the config (:func:`calibration_for`),
  ``compress_``, the checkpoint written;
* :func:`recover_checkpoint`: a sentence encoder pruned block by block while distilling its dense
  embeddings (``--recover``), checked on held-out sentences, written.

The output directory is checked before the model loads (nothing is written on a bad path) and
written in one move at the end (:func:`sparsa.nn.checkpoint.save_checkpoint`).
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sparsa.atomic import CHECKPOINT, check_output_dir
from sparsa.compress.api import compress_
from sparsa.compress.config import CalibratedConfig, MethodConfig
from sparsa.compress.recover import RecoverConfig
from sparsa.compress.recover_encoder import recover_encoder_
from sparsa.data import calibration_windows, load_corpus, tokenize
from sparsa.data.sentences import corpus_sentences
from sparsa.data.tokens import Bos, bos_for
from sparsa.errors import SparsaError
from sparsa.evaluate.embeddings import embedding_agreement
from sparsa.nn.checkpoint import save_checkpoint
from sparsa.nn.encoders import check_encoder_spec, embed, load_encoder
from sparsa.nn.models import load_model
from sparsa.nn.surgery import all_linears, decoder_linears

HELD_OUT_SENTENCES = 512  # recover_checkpoint: wiki evaluation-split sentences its embeddings are checked on


def calibration_for(config: CalibratedConfig, tokenizer, seed: int, bos: Bos, corpus=None) -> torch.Tensor:
    """The windows ``config`` asks for: ``config.nsamples`` of ``config.seqlen`` tokens drawn (seeded)
    from its corpus's calibration split (``corpus``: that corpus, already loaded), BOS placed by
    ``bos``. [nsamples, seqlen] int64."""
    corpus = corpus if corpus is not None else load_corpus(config.calib)
    return calibration_windows(tokenize(tokenizer, corpus.calib), config.nsamples, config.seqlen, seed, bos=bos,
                               source=f"{config.calib} calibration split")


@dataclass
class CheckpointSummary:
    """What a pipeline wrote (the fields of ``sparsa compress --json``; sizes from the manifest).

    Attributes:
        dir: the checkpoint directory.
        method: the compression method.
        bits_per_param: bits of the compressed linear layers per parameter, metadata included.
        bytes, params: their bytes on disk and parameter count.
        layers: linear layers compressed.
        seconds: wall time of compression and saving (the model load excluded).
        head: whether the output head was compressed (causal LMs).
        bos: the calibration windows' BOS record (None without calibration).
        block_errors: calibrated methods: relative squared output error of each block.
        choices: ``auto``: layers per candidate (absent from ``to_dict`` when empty).
        recover: ``recover_checkpoint``: steps, learning rate, final loss and held-out agreement.
    """

    dir: str
    method: str
    bits_per_param: float
    bytes: int
    params: int
    layers: int
    seconds: float
    head: bool | None = None
    bos: dict | None = None
    block_errors: list[float] = field(default_factory=list)
    choices: dict[str, int] = field(default_factory=dict)
    recover: dict | None = None

    def to_dict(self) -> dict:
        out = {"dir": self.dir, "method": self.method, "bits_per_param": self.bits_per_param, "bytes": self.bytes,
               "params": self.params, "layers": self.layers}
        if self.recover is not None:
            return {**out, "seconds": self.seconds, "recover": self.recover}
        return {**out, "bos": self.bos, "seconds": self.seconds, "head": self.head, "block_errors": self.block_errors,
                **({"choices": self.choices} if self.choices else {})}

    def brief(self) -> str:
        line = (f"wrote {self.dir}: {self.method}, {self.layers} layers, {self.bits_per_param:.3f} bits/param, "
                f"{self.bytes:,} bytes for {self.params:,} params, {self.seconds:.1f} s")
        if self.recover is None:
            return line
        a = self.recover
        return (f"{line}\nrecovery {a['steps']} steps: embedding cosine to dense {a['cosine_mean']:.4f} mean, "
                f"{a['cosine_min']:.4f} min; top-{a['k']} neighbour overlap {a['topk_overlap']:.3f} "
                f"({a['sentences']} held-out sentences)")


def compress_checkpoint(model_spec: str, config: MethodConfig, out_dir, *, seed: int = 0, device: str = "cpu",
                        head: bool | None = None, bos: str = "auto", dtype: torch.dtype | None = None,
                        force: bool = False, progress: bool = True) -> CheckpointSummary:
    """Compress the dense model ``model_spec`` with ``config`` and write the checkpoint ``out_dir``.

    Args:
        model_spec: ``smollm2-135m``, a ``.gguf`` file or a Hugging Face directory.
        config: a method config; calibrated methods draw their windows with ``seed``.
        out_dir: created, or replaced when sparsa wrote it (``force``: whatever it holds).
        device: where calibrated methods compute.
        head: compress the output head too (default: the method's ``head_by_default``).
        bos: the calibration windows' BOS protocol (``auto``, ``once``, ``never``).
        dtype: cast the dense model first.
    """
    if device != "cpu" and not config.needs_calibration:
        raise SparsaError(f"--device {device}: --method {config.method} runs on the CPU (no calibration)")
    out = Path(out_dir)
    check_output_dir(out, CHECKPOINT, force=force)  # before the model loads: fail fast, write nothing
    corpus = load_corpus(config.calib) if config.needs_calibration else None  # fails before the model loads
    torch.manual_seed(seed)
    lm = load_model(model_spec, dtype=dtype)
    if lm.manifest is not None:
        raise SparsaError(f"{model_spec}: already a sparsa checkpoint; compress a dense model")
    windows, record = None, None  # record: the calibration windows' BOS record, None without calibration
    if config.needs_calibration:
        rule = bos_for(lm.tokenizer, bos)
        windows = calibration_for(config, lm.tokenizer, seed, rule, corpus)
        record = rule.to_dict()
    start = time.perf_counter()
    head = config.head_by_default if head is None else head
    summary = compress_(lm.model, config, calibration=windows, device=device, progress=progress,
                        filter_fn=all_linears if head else decoder_linears)
    manifest = save_checkpoint(lm.model, lm.tokenizer, out, method={**config.to_dict(), "seed": seed, "bos": record},
                               force=force)
    return CheckpointSummary(dir=str(out), method=config.method, bits_per_param=manifest["bits_per_param"],
                             bytes=manifest["bytes"], params=manifest["params"], layers=summary.layers,
                             seconds=round(time.perf_counter() - start, 3), head=head, bos=record,
                             block_errors=summary.block_errors, choices=summary.choices)


def recover_checkpoint(model_spec: str, config: MethodConfig, out_dir, *, seed: int = 0, steps: int | None = None,
                       lr: float | None = None, calib: str | None = None, device: str = "cpu", force: bool = False,
                       progress: bool = True) -> CheckpointSummary:
    """Prune the sentence encoder ``model_spec`` to ``config``'s block pattern and sparsity gradually,
    distilling its dense embeddings on ``calib``'s sentences (default wiki), and write ``out_dir``.

    ``config`` must be magnitude pruning with a ``block:RxC`` pattern; ``steps`` and ``lr`` default to
    :class:`~sparsa.compress.recover.RecoverConfig`'s. The summary's ``recover`` holds the embedding
    agreement with the dense model on ``HELD_OUT_SENTENCES`` held-out sentences."""
    if config.method != "magnitude":
        raise SparsaError(f"--recover prunes blocks by magnitude while distilling; use --method magnitude, "
                          f"not {config.method}")
    if config.parsed_pattern.kind != "block":
        raise SparsaError(f"--recover needs --pattern block:RxC (e.g. block:1x16), not {config.pattern}")
    if device != "cpu":
        raise SparsaError(f"--device {device}: --recover runs on the CPU")
    check_encoder_spec(model_spec)
    out = Path(out_dir)
    check_output_dir(out, CHECKPOINT, force=force)
    recover = RecoverConfig(sparsity=config.sparsity, block=config.parsed_pattern.block, seed=seed,
                            **{k: v for k, v in {"steps": steps, "lr": lr}.items() if v is not None})
    sentences, held_out = corpus_sentences(calib or "wiki", HELD_OUT_SENTENCES)
    torch.manual_seed(seed)
    encoder = load_encoder(model_spec)
    if encoder.manifest is not None:
        raise SparsaError(f"{model_spec}: already a sparsa checkpoint; compress a dense model")
    dense = embed(encoder, held_out)
    start = time.perf_counter()
    summary = recover_encoder_(encoder, recover, sentences=sentences, progress=progress)
    agreement = embedding_agreement(dense, embed(encoder, held_out))
    manifest = save_checkpoint(encoder.model, encoder.tokenizer, out,
                               method={**config.to_dict(), "recover": asdict(recover), "seed": seed}, force=force)
    return CheckpointSummary(dir=str(out), method=config.method, bits_per_param=manifest["bits_per_param"],
                             bytes=manifest["bytes"], params=manifest["params"], layers=summary.layers,
                             seconds=round(time.perf_counter() - start, 3),
                             recover={"steps": recover.steps, "lr": recover.lr, "final_loss": summary.losses[-1],
                                      "calibration_sentences": len(sentences), **agreement.to_dict()})
