"""Configs of the compression methods: frozen dataclasses holding every default, validated on creation."""

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from sparsa.errors import SparsaError
from sparsa.formats.ggml import BLOCK, BLOCK_TYPES
from sparsa.formats.kquant import K_TYPES, check_shape
from sparsa.formats.quant import MAX_BITS, MIN_BITS

VERSION = 1


def check_bits(flag: str, value: int) -> None:
    """Raise unless a code width (``--bits``, ``--stat-bits``) is one the formats store."""
    if not MIN_BITS <= value <= MAX_BITS:
        raise SparsaError(f"{flag} {value} is outside {MIN_BITS}..{MAX_BITS}")


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
    needs_calibration: ClassVar[bool] = False
    # whether a decoder's output head is compressed unless the user says otherwise: quantizers yes
    # (the head is a fifth of a small LM's weights and decode reads all of it per token); pruning
    # the head removes vocabulary logits outright, so pruning methods leave it dense by default
    head_by_default: ClassVar[bool] = False

    def to_dict(self) -> dict:
        return {"method": self.method, "version": VERSION, **asdict(self)}

    def check_weight(self, shape: tuple[int, int], where: str) -> None:
        """Raise a SparsaError naming ``where`` if this method cannot take a weight of ``shape``
        (``compress_`` asks for every target before any compute). Every shape by default."""

    @classmethod
    def from_flags(cls, **flags) -> "MethodConfig":
        """Build from CLI flags given by the user (None = not given); reject flags the method ignores."""
        names = {f.name for f in fields(cls)}
        for flag, value in flags.items():
            if value is not None and flag not in names:
                raise SparsaError(f"--method {cls.method} does not take --{flag.replace('_', '-')}")
        return cls(**{k: v for k, v in flags.items() if v is not None and k in names})


GRIDS = (*BLOCK_TYPES, *K_TYPES)


class GridMixin:
    """For configs with ``bits``, ``group_size``, ``symmetric`` and ``grid``: ``grid`` quantizes on
    that ggml type's grid exactly, so ``sparsa export --to gguf`` writes the codes as they are:
    ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q8_0`` (blocks of 32, fp16 scale and minimum, Q8_0's
    ``max|w| / 127`` scale: a :class:`~sparsa.formats.quant.Quant`) or the k-quants ``q4_k``,
    ``q5_k``, ``q6_k`` (super-blocks of 256 with 6-bit sub-block scales: a
    :class:`~sparsa.formats.kquant.KQuant`; rows must be whole super-blocks)."""

    def apply_grid(self, defaults: tuple[int, int, bool]) -> None:
        """Set ``bits``, ``group_size`` and ``symmetric`` from ``grid``; a SparsaError when they were given
        otherwise (anything but the class defaults) or the grid is unknown."""
        if self.grid is None:
            return
        if self.grid not in GRIDS:
            raise SparsaError(f"--grid {self.grid!r} is not one of {', '.join(GRIDS)}")
        if self.grid in K_TYPES:
            t = K_TYPES[self.grid]
            grid = (t.bits, t.sub, not t.minimums)
        else:
            t = BLOCK_TYPES[self.grid]
            grid = (t.bits, BLOCK, t.symmetric)
        if (self.bits, self.group_size, self.symmetric) not in (defaults, grid):
            raise SparsaError(f"--grid {self.grid} sets --bits {grid[0]} --group-size {grid[1]}"
                              f"{' --symmetric' if grid[2] else ''}; drop the other grid flags")
        for name, value in zip(("bits", "group_size", "symmetric"), grid):
            object.__setattr__(self, name, value)

    def check_weight(self, shape: tuple[int, int], where: str) -> None:
        """k-quant grids need rows of whole super-blocks."""
        if self.kquant:
            check_shape(self.kquant, shape, where)

    @property
    def kquant(self) -> str | None:
        """The k-quant type ``grid`` names, or None."""
        return self.grid if self.grid in K_TYPES else None

    @property
    def absmax(self) -> bool:
        """Whether groups take :func:`~sparsa.formats.quant.absmax_stats` grids (Q8_0's rule)."""
        return self.grid == "q8_0"

    def to_dict(self) -> dict:
        out = super().to_dict()
        if out.get("grid") is None:
            out.pop("grid", None)  # recorded only when chosen
        return out

    @classmethod
    def from_flags(cls, **flags):
        if flags.get("grid") is not None:
            given = [f"--{k.replace('_', '-')}" for k in ("bits", "group_size", "symmetric") if flags.get(k) is not None]
            if given:
                raise SparsaError(f"--grid {flags['grid']} sets the grid; drop {', '.join(given)}")
        return super().from_flags(**flags)


@dataclass(frozen=True)
class RTNConfig(GridMixin, MethodConfig):
    """Round-to-nearest group quantization, asymmetric min-max, no calibration.

    Args:
        bits: bits per weight code, 2..8.
        group_size: input columns sharing one fp16 scale and minimum (the last group of a row
            is shorter when it does not divide in_features).
        symmetric: symmetric grids, no stored minimum (GGUF Q4_0's rule; 4.5 bits/param at 4 bits, g32).
        grid: a ggml block type's grid (:class:`GridMixin`); sets the three above.
    """

    head_by_default: ClassVar[bool] = True
    method: ClassVar[str] = "rtn"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    grid: str | None = None

    def __post_init__(self):
        self.apply_grid((4, 128, False))
        check_bits("--bits", self.bits)
        if self.group_size <= 0:
            raise SparsaError(f"--group-size {self.group_size} must be positive")


class PatternMixin:
    """For configs with a ``pattern`` field: the parsed :class:`Pattern`."""

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)


def resolve_sparsity(pattern_text: str, sparsity: float | None) -> float:
    """The sparsity a pattern + ``--sparsity`` mean: N:M implies ``1 - N/M`` (a disagreeing
    ``--sparsity`` is an error); otherwise the given value, default 0.5, in [0, 1)."""
    pattern = parse_pattern(pattern_text)
    if pattern.kind == "nm":
        implied = 1 - pattern.n / pattern.m
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise SparsaError(f"--sparsity {sparsity} disagrees with --pattern {pattern} "
                              f"(which means sparsity {implied:g}); drop --sparsity")
        sparsity = implied
    elif sparsity is None:
        sparsity = 0.5
    if not 0.0 <= sparsity < 1.0:
        raise SparsaError(f"--sparsity {sparsity} is outside [0, 1)")
    return sparsity


@dataclass(frozen=True)
class MagnitudeConfig(PatternMixin, MethodConfig):
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
        object.__setattr__(self, "sparsity", resolve_sparsity(self.pattern, self.sparsity))


@dataclass(frozen=True)
class CalibratedConfig(MethodConfig):
    """Base of the methods that read calibration activations (layer-sequential driver).

    Args:
        nsamples: calibration windows, drawn without overlap from the corpus's calibration split.
        seqlen: tokens per calibration window.
        calib: calibration corpus (``wiki`` or ``shakespeare``).
        percdamp: dampening ``H += percdamp·mean(diag H)·I`` (raised tenfold if Cholesky fails).
    """

    needs_calibration: ClassVar[bool] = True
    nsamples: int = 128
    seqlen: int = 2048
    calib: str = "wiki"
    percdamp: float = 0.01

    def __post_init__(self):
        if self.nsamples < 1:
            raise SparsaError(f"--nsamples {self.nsamples} must be at least 1")
        if self.seqlen < 2:
            raise SparsaError(f"--seqlen {self.seqlen} must be at least 2")
        if not self.percdamp > 0:
            raise SparsaError(f"--percdamp {self.percdamp} must be positive")


@dataclass(frozen=True)
class GPTQConfig(GridMixin, CalibratedConfig):
    """GPTQ (Frantar et al. 2022, arXiv 2210.17323): OBS quantization with error feedback.

    Args:
        bits: bits per code, 2..8.
        group_size: input columns per fp16 scale/minimum; 0 = one group per row.
        act_order: solve columns by decreasing ``diag H``; with groups this implies static groups.
        static_groups: fit every group's grid on the original weights before the solve.
        symmetric: symmetric grids, no stored minimum (GGUF Q4_0's rule).
        grid: a ggml block type's grid (:class:`GridMixin`); sets bits, group_size and symmetric.
        error_feedback: spread each column's rounding error over the columns not yet quantized
            (GPTQ's OBS update); off, every weight rounds on its grid alone, and the calibration
            shapes only the grid (with ``grid``: the weighted scale search).
    """

    head_by_default: ClassVar[bool] = True
    method: ClassVar[str] = "gptq"
    bits: int = 4
    group_size: int = 128
    act_order: bool = True
    static_groups: bool = False
    symmetric: bool = False
    grid: str | None = None
    error_feedback: bool = True

    def __post_init__(self):
        self.apply_grid((4, 128, False))
        super().__post_init__()
        check_bits("--bits", self.bits)
        if self.group_size < 0:
            raise SparsaError(f"--group-size {self.group_size} must be positive (or 0 for whole rows)")


# SpQR recipes: bits -> (outlier_threshold τ, percdamp) used when the flags are not given.
# 4-bit: the paper's (τ 0.2, percdamp 1.0): 4.673 bits/param on SmolLM2-135M. 3-bit: the paper's
# τ 0.2 keeps ~1.8% outliers there (4.26 bits/param in the first layout); τ 0.3 with percdamp 0.01 measured 3.93
# bits/param and the lowest perplexity of the sweep in bench/results/spqr_sweep.md.
SPQR_RECIPES = {3: (0.3, 0.01), 4: (0.2, 1.0)}


@dataclass(frozen=True)
class SpQRConfig(CalibratedConfig):
    """SpQR (Dettmers et al. 2023, arXiv 2306.03078): small groups, quantized statistics, outliers.

    Args:
        bits: bits per weight code, 2..8 (the 3-bit and 4-bit recipes).
        group_size: β1, permuted input columns per first-level scale/zero.
        stat_bits: bits of the second-level codes of scales and zeros.
        stat_group_size: β2, rows sharing one second-level grid.
        outlier_threshold: τ; a weight whose Hessian-weighted error exceeds τ·mean(var(W)/Hinv_jj²)
            stays in fp16 (default: the recipe of ``bits``, ``SPQR_RECIPES``).
        simplified_outliers: skip the leave-one-out refit of group statistics (faster, worse).
        act_order: solve columns by decreasing ``diag H`` (the permutation is stored).
        percdamp: dampening (default: the recipe of ``bits``).
    """

    head_by_default: ClassVar[bool] = True
    method: ClassVar[str] = "spqr"
    bits: int = 3
    group_size: int = 16
    stat_bits: int = 3
    stat_group_size: int = 16
    outlier_threshold: float | None = None
    simplified_outliers: bool = False
    act_order: bool = True
    percdamp: float | None = None

    def __post_init__(self):
        recipe_tau, recipe_damp = SPQR_RECIPES[min(max(self.bits, 3), 4)]
        if self.outlier_threshold is None:
            object.__setattr__(self, "outlier_threshold", recipe_tau)
        if self.percdamp is None:
            object.__setattr__(self, "percdamp", recipe_damp)
        super().__post_init__()
        check_bits("--bits", self.bits)
        check_bits("--stat-bits", self.stat_bits)
        if self.group_size <= 0 or self.stat_group_size <= 0:
            raise SparsaError("--group-size and --stat-group-size must be positive")
        if not self.outlier_threshold > 0:
            raise SparsaError(f"--outlier-threshold {self.outlier_threshold} must be positive")


@dataclass(frozen=True)
class SparseGPTConfig(PatternMixin, CalibratedConfig):
    """SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): OBS pruning with weight update.

    Args:
        sparsity: fraction removed per layer (N:M implies it).
        pattern: ``unstructured`` (adaptive mask per 128-column block), ``N:M`` or ``block:RxC``.
        bits: also quantize the kept weights to this many bits (joint sparse + quantized), or None.
        group_size: input columns per quantization grid when ``bits`` is set.
    """

    method: ClassVar[str] = "sparsegpt"
    sparsity: float | None = None
    pattern: str = "unstructured"
    bits: int | None = None
    group_size: int = 128

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "sparsity", resolve_sparsity(self.pattern, self.sparsity))
        if self.bits is not None:
            check_bits("--bits", self.bits)
        if self.group_size <= 0:
            raise SparsaError(f"--group-size {self.group_size} must be positive")


@dataclass(frozen=True)
class WandaConfig(PatternMixin, CalibratedConfig):
    """Wanda (Sun et al. 2023, arXiv 2306.11695): prune by ``|W_ij|·‖X_j‖`` per output row, no update.

    Args:
        sparsity: fraction removed per row (N:M implies it).
        pattern: ``unstructured`` or ``N:M``.
    """

    method: ClassVar[str] = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "sparsity", resolve_sparsity(self.pattern, self.sparsity))
        if parse_pattern(self.pattern).kind == "block":
            raise SparsaError("--method wanda takes --pattern unstructured or N:M")


@dataclass(frozen=True)
class AutoConfig(CalibratedConfig):
    """Per-layer choice of format and bit-width under a global budget (beyond the anchors).

    Every linear layer is compressed with each candidate (SpQR 2/3/4-bit recipes, SpQR 3-bit with
    few outliers (τ 1.0), SparseGPT 2:4 + 4-bit and 50% + 3-bit); each candidate's Hessian-weighted output error
    ``tr((W - Q) H (W - Q)ᵀ)`` and stored bytes are recorded; the choice minimises the summed
    error subject to ``8 · Σ bytes / Σ params <= budget``.

    Args:
        budget: bits/param over the compressed linear layers (as saved).
    """

    method: ClassVar[str] = "auto"
    budget: float = 3.5

    def __post_init__(self):
        super().__post_init__()
        if not 2.0 <= self.budget <= 16.0:
            raise SparsaError(f"--budget {self.budget} is outside [2, 16] bits/param")
