"""What ``sparsa attention eval`` and ``sparsa attention bench`` report (Ceres' pattern): the
library returns the JSON, and these read it back for ``brief()``, the lines a person reads.
Times are in the units their names carry (``_seconds``, ``_ms``)."""

from dataclasses import dataclass, fields


@dataclass
class AttentionEvalSummary:
    """AnchorAttention on a model's real attention: per selector ``recall``, ``density`` and, where
    they apply, ``gap_to_optimum``, ``rel_err`` and ``close_share`` (``overall``)."""

    model: str
    text: str
    seqlen: int
    theta: float
    selection_seconds: float
    overall: dict
    sweep: dict | None = None

    @classmethod
    def from_dict(cls, r: dict) -> "AttentionEvalSummary":
        """The fields of ``r`` (the JSON of ``sparsa attention eval``) this summary reads."""
        return cls(**{f.name: r[f.name] for f in fields(cls) if f.name in r})

    def brief(self) -> str:
        lines = [f"{self.model}: {self.seqlen} tokens of {self.text}, theta {self.theta:g} "
                 f"(selection {self.selection_seconds:.1f} s)",
                 f"{'selector':<16}{'recall':>9}{'density':>9}{'gap':>9}{'rel_err':>9}{'|dO|<1e-2':>11}"]
        for name, m in self.overall.items():
            rest = "".join(f"{m[k]:>{w}.4f}" if k in m else f"{'-':>{w}}"
                           for k, w in (("gap_to_optimum", 9), ("rel_err", 9), ("close_share", 11)))
            lines.append(f"{name:<16}{m['recall']:>9.4f}{m['density']:>9.4f}{rest}")
        if "optimum" in self.overall:
            lines.append("gap: the optimum's recall at the selector's own pair count in every head, minus its recall")
        if self.sweep is not None:
            lines.append(f"sweep: wrote {self.sweep['files']}")
        return "\n".join(lines)


@dataclass
class AttentionBenchSummary:
    """The kernel benchmark: per length ``sdpa_ms``, ``anchor_ms``, ``selection_ms``, ``speedup`` and
    ``density``, written to ``{out}/{name}.*``; or why it was ``skipped``."""

    out: str | None = None
    name: str | None = None
    rows: list | None = None
    skipped: str | None = None

    def brief(self) -> str:
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        lines = [f"wrote {self.out}/{self.name}.{{json,md,png}}"]
        for row in self.rows:
            lines.append(f"{row['seqlen']:>7} tokens  sdpa {row['sdpa_ms']:.2f} ms  anchor {row['anchor_ms']:.2f} ms "
                         f"(selection {row['selection_ms']:.2f} ms)  {row['speedup']:.2f}x  density {row['density']:.3f}")
        return "\n".join(lines)
