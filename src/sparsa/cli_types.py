"""Flag checks shared by every command module: argparse ``type=`` checks for numeric flags (a bad value is
one ``sparsa: error: ... argument --flag: got X; expected ...`` line before any work starts), the
``--device`` check and the ``--bos`` flag. Command modules import these, never ``sparsa.cli``."""

import argparse
import math

from sparsa.errors import SparsaError, bounds_text

DEVICE_HELP = "cpu, cuda or cuda:N"  # what check_device accepts


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
