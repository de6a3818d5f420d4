"""What ``sparsa merge`` and ``sparsa merge-eval`` report (Ceres' pattern): ``to_dict()`` the JSON,
``brief()`` the lines a person reads. Sizes are in bytes and bits per parameter, as the names say."""

from dataclasses import asdict, dataclass


def router_brief(router: dict) -> str:
    """One line: the router's kind, bytes and query samples per task."""
    samples = ", ".join(f"{t} {n}" for t, n in router["samples"].items())
    return f"  router {router['kind']}: {router['nbytes']} bytes, query samples {samples}"


@dataclass
class MergeSummary:
    """One merge written to ``out``: a switch bank (``file_bytes``; per task ``nbytes``, ``numel``,
    ``bits_per_param``; ``router`` when routed) or a merged model (``tensors``, ``params``)."""

    out: str
    merge_method: str
    file_bytes: int | None = None
    tasks: dict | None = None
    router: dict | None = None
    tensors: int | None = None
    params: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def brief(self) -> str:
        lines = [f"wrote {self.out} ({self.merge_method})"]
        for task, info in (self.tasks or {}).items():
            lines.append(f"  {task:<20} {info['nbytes']:>10} bytes  {info['bits_per_param']:.3f} bits/param")
        if self.router is not None:
            lines.append(router_brief(self.router))
        if self.params is not None:
            lines.append(f"  {self.tensors} tensors, {self.params} parameters")
        return "\n".join(lines)


@dataclass
class BankReport:
    """A switch bank read back: per task its bytes, bits per parameter, ``rel_err`` and ``cosine``
    against the fine-tuned task vector, and with inputs ``samples``, ``routed_share``,
    ``batch_weights`` and ``perplexity``; ``router`` when the bank has one."""

    dir: str
    merge_method: str
    file_bytes: int
    tasks: dict
    router: dict | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def brief(self) -> str:
        lines = [f"{self.dir} ({self.merge_method}, {self.file_bytes} bytes on disk)"]
        for task, t in self.tasks.items():
            lines.append(f"  {task:<20} {t['nbytes']:>10} bytes  {t['bits_per_param']:.3f} bits/param  "
                         f"rel_err {t['rel_err']:.4f}  cosine {t['cosine']:.4f}")
            if "samples" in t:
                scores = [f"{t['samples']} samples"]
                if "routed_share" in t:
                    scores.append(f"routed here {100 * t['routed_share']:.0f}%")
                scores += [f"ppl {k} {v:.2f}" for k, v in t.get("perplexity", {}).items()]
                lines.append(f"  {'':<20} " + "  ".join(scores))
        if self.router is not None:
            lines.append(router_brief(self.router))
        return "\n".join(lines)
