"""Configs of the compression methods: frozen dataclasses holding every default, validated on creation."""

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from sparsa.errors import SparsaError

VERSION = 1


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: ``unstructured``, ``nm`` (N of every M inputs) or ``block`` (RxC tiles)."""

    kind: str
    n: int = 0
    m: int = 0
    block: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.block[0]}x{self.block[1]}"
        return self.kind


def parse_pattern(text: str) -> Pattern:
    """Parse ``unstructured``, ``N:M`` (e.g. ``2:4``) or ``block:RxC`` (e.g. ``block:1x16``)."""
    bad = SparsaError(f"--pattern {text!r} is not unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:1x16)")
    if text == "unstructured":
        return Pattern("unstructured")
    try:
        if text.startswith("block:"):
            r, c = (int(v) for v in text[len("block:"):].lower().split("x"))
            if r <= 0 or c <= 0:
                raise bad
            return Pattern("block", block=(r, c))
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise bad from None
    if not 1 <= n < m <= 256:
        raise SparsaError(f"--pattern {text}: needs 1 <= N < M <= 256")
    return Pattern("nm", n=n, m=m)


@dataclass(frozen=True)
class MethodConfig:
    """Base: ``method`` names the registered method; ``to_dict`` feeds ``sparsa.json``."""

    method: ClassVar[str]

    def to_dict(self) -> dict:
        return {"method": self.method, "version": VERSION, **asdict(self)}

    @classmethod
    def from_flags(cls, **flags) -> "MethodConfig":
        """Build from CLI flags given by the user (None = not given); reject flags the method ignores."""
        names = {f.name for f in fields(cls)}
        for flag, value in flags.items():
            if value is not None and flag not in names:
                raise SparsaError(f"--method {cls.method} does not take --{flag.replace('_', '-')}")
        return cls(**{k: v for k, v in flags.items() if v is not None and k in names})


@dataclass(frozen=True)
class RTNConfig(MethodConfig):
    """Round-to-nearest group quantization, asymmetric min-max, no calibration.

    Args:
        bits: bits per weight code, 2..8.
        group_size: input columns sharing one fp16 scale and minimum; divides in_features.
    """

    method: ClassVar[str] = "rtn"
    bits: int = 4
    group_size: int = 128

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise SparsaError(f"--bits {self.bits} is outside 2..8")
        if self.group_size <= 0:
            raise SparsaError(f"--group-size {self.group_size} must be positive")


@dataclass(frozen=True)
class MagnitudeConfig(MethodConfig):
    """Magnitude pruning: drop the smallest |w| (or the blocks of smallest L2 norm), no update.

    Args:
        sparsity: fraction of weights removed per layer, in [0, 1). For N:M it must equal 1 - N/M
            and defaults to it.
        pattern: ``unstructured``, ``N:M`` or ``block:RxC``.
    """

    method: ClassVar[str] = "magnitude"
    sparsity: float | None = None
    pattern: str = "unstructured"

    def __post_init__(self):
        pattern = parse_pattern(self.pattern)
        if pattern.kind == "nm":
            implied = 1 - pattern.n / pattern.m
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise SparsaError(f"--sparsity {self.sparsity} disagrees with --pattern {pattern} "
                                  f"(which means sparsity {implied:g}); drop --sparsity")
            object.__setattr__(self, "sparsity", implied)
        elif self.sparsity is None:
            object.__setattr__(self, "sparsity", 0.5)
        if not 0.0 <= self.sparsity < 1.0:
            raise SparsaError(f"--sparsity {self.sparsity} is outside [0, 1)")

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)
