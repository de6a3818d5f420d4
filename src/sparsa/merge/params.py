"""Declared type and range of every merge parameter: one check for the parameters of every method.

Each registered method declares a :class:`Param` per keyword parameter (``@register_method(...,
params=...)``) and T-Switch one per config field (:data:`~sparsa.merge.config.TSWITCH_SPECS`); a YAML
value, a config field and a keyword argument all pass :meth:`Param.check`.
"""

import math
from dataclasses import dataclass

from sparsa.errors import SparsaError, bounds_text

KINDS = (float, int, str)


@dataclass(frozen=True)
class Param:
    """What one parameter accepts.

    Attributes:
        kind: ``float`` (a finite int or float, never a bool), ``int`` (an int, never a bool) or
            ``str`` (one of ``choices``, or without choices any non-empty string, e.g. a path).
        low, high: bounds of a number (None: unbounded on that side).
        low_open, high_open: whether that bound itself is excluded.
        choices: the strings a ``str`` parameter may take.
    """

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS or (self.choices and self.kind is not str):
            raise ValueError("Param: kind must be float, int or str, and only str takes choices")

    def expected(self) -> str:
        """``a finite number in [0, 1)``, ``an integer >= 1``, ``one of 'l2', 'l1'``."""
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "a non-empty string"
        noun = "an integer" if self.kind is int else "a finite number"
        return f"{noun} {self.range()}".rstrip()

    def range(self) -> str:
        return bounds_text(self.low, self.high, low_open=self.low_open, high_open=self.high_open)

    def check(self, name: str, value, where: str):
        """``value`` if it is of this kind and in range; else SparsaError ``"{where}: {name}=...: ..."``."""
        if self.kind is str:
            if not isinstance(value, str) or (value not in self.choices if self.choices else not value):
                raise SparsaError(f"{where}: {name}={value!r}: must be {self.expected()}")
            return value
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise SparsaError(f"{where}: {name}={value!r} is a {type(value).__name__}; expected {self.expected()}")
        if not math.isfinite(value):
            raise SparsaError(f"{where}: {name}={value}: must be {self.expected()}")
        if not self.contains(value):
            raise SparsaError(f"{where}: {name}={value}: must be {self.range()}")
        return value

    def contains(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


REAL = Param(float)  # any finite number, e.g. a scaling coefficient
UNIT = Param(float, 0.0, 1.0)  # a share in [0, 1]
UNIT_OPEN = Param(float, 0.0, 1.0, high_open=True)  # a share in [0, 1)


def check_values(values: dict, specs: dict[str, Param], where: str) -> dict:
    """``values`` with every key known to ``specs`` and every value passing its :class:`Param`."""
    for name, value in values.items():
        if name not in specs:
            raise SparsaError(f"{where}: unknown parameter {name!r}; known: {', '.join(specs) or 'none'}")
        specs[name].check(name, value, where)
    return dict(values)
