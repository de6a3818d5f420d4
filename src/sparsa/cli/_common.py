"""What every command module shares: the parser with the one-line ``sparsa: error:`` format, ``fail``
and ``emit``, argparse ``type=`` checks for numeric flags (a bad value is one ``sparsa: error: ...
argument --flag: got X; expected ...`` line before any work starts), the ``--device`` check, and
the ``--dtype``, ``--bos`` and ``--attention`` flags. Command modules import these, never
``sparsa.cli`` itself."""

import argparse
import math
import sys

from sparsa import json_safe
from sparsa.errors import SparsaError, bounds_text

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}

DEVICE_HELP = "cpu, cuda or cuda:N"  # what check_device accepts


class Parser(argparse.ArgumentParser):
    """argparse with the ``sparsa: error:`` one-line error format."""

    def error(self, message):
        fail(f"{self.prog}: {message}")


def fail(message: str, code: int = 2):
    print(f"sparsa: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def emit(result: dict, as_json: bool, table) -> None:
    """Print ``result`` as one JSON line (NaN and inf as null, named under ``non_finite``), or as the
    human table ``table(result)`` returns."""
    print(json_safe.dumps(result) if as_json else table(result), flush=True)


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, DTYPES[name])


def number(kind: type = float, low=None, high=None, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type``: a finite ``kind`` (``int`` or ``float``) within the bounds given.

    Example: ``p.add_argument("--threads", type=number(int, 1))`` refuses ``--threads -2`` with
    ``argument --threads: got -2; expected an integer >= 1``.
    """
    noun = "an integer" if kind is int else "a finite number"
    expected = " ".join(filter(None, (noun, bounds_text(low, high, low_open=low_open, high_open=high_open))))

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"got {text}; expected {expected}")
        return value

    parse.__name__ = expected  # argparse names the type by it in its own messages
    return parse


def check_device(device: str) -> None:
    """The one ``--device`` check of every command: ``cpu``, ``cuda`` or ``cuda:N`` of a present GPU."""
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise SparsaError(f"--device {device!r}: not a device; use {DEVICE_HELP} (e.g. --device cuda:0)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SparsaError(f"--device {device}: no CUDA device is available")
    count = torch.cuda.device_count() if device.startswith("cuda:") else 0
    if device.startswith("cuda:") and int(device.removeprefix("cuda:")) >= count:
        raise SparsaError(f"--device {device}: only {count} CUDA device(s), cuda:0..cuda:{count - 1}")


def add_bos_flag(p, windows: str) -> None:
    """``--bos``: where the ``windows`` (what they are, e.g. "evaluation windows") carry the tokenizer's BOS token."""
    from sparsa.data.tokens import BOS_PROTOCOLS

    p.add_argument("--bos", choices=BOS_PROTOCOLS, default="auto",
                   help=f"BOS token in the {windows}: auto = BOS + seqlen-1 text tokens in every window; once = "
                        "BOS before the whole text only (the GPTQ papers); never = text tokens only; auto and once "
                        "add a BOS only when the tokenizer adds one by default (default %(default)s)")


def add_attention_flags(p) -> None:
    p.add_argument("--attention", choices=("sdpa", "anchor"), default="sdpa",
                   help="prefill attention: sdpa (dense, default) or anchor (AnchorAttention; decode stays dense)")
    from sparsa.attention.config import IDENTIFY, AnchorConfig

    p.add_argument("--theta", type=float,
                   help=f"--attention anchor: threshold in natural-log units (default {AnchorConfig.theta:g})")
    p.add_argument("--identify", choices=IDENTIFY,
                   help=f"--attention anchor: stripe identification rule (default {AnchorConfig.identify})")


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
