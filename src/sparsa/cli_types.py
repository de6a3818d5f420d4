"""argparse ``type=`` checks for numeric flags: each flag declares what it accepts, so a bad value is
one ``sparsa: error: ... argument --flag: got X; expected ...`` line before any work starts."""

import argparse
import math

from sparsa.errors import bounds_text

DEVICE_HELP = "cpu, cuda or cuda:N"  # what sparsa.cli.check_device accepts


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
