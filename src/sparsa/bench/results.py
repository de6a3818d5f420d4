"""Writing benchmark results: ``<name>.json`` + ``<name>.md`` (+ ``<name>.png``), with date and machine."""

import datetime
import os
import platform
from pathlib import Path

import torch

from sparsa import json_safe


def cpu_name() -> str:
    """The CPU's model and its widest vector ISA, e.g. ``AMD EPYC (x86_64, AVX2)`` or
    ``Intel Xeon ... (x86_64, AVX-512 VNNI)``: the CPU kernels take different paths on each."""
    arch = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return arch
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), None)
    details = ", ".join(x for x in (arch, isa) if x)
    return f"{fields['model name']} ({details})" if "model name" in fields else details


def machine(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
            "cores": os.cpu_count(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_results(out_dir, name: str, payload: dict, markdown: str, figure=None) -> list[Path]:
    """Write ``payload`` as JSON, ``markdown`` as .md, and a matplotlib ``figure`` as .png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    write_atomic(paths[0], (json_safe.dumps(payload, indent=2) + "\n").encode())
    write_atomic(paths[1], markdown.encode())
    if figure is not None:
        paths.append(out_dir / f"{name}.png")
        tmp = paths[-1].with_name(f".{name}.png.tmp")
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        tmp.replace(paths[-1])
    return paths


def batch_bars(payload: dict, key: str, ylabel: str, title: str, columns: dict[str, str] | None = None):
    """Log-scale bars of ``row[key][column]`` for every row that ran, one bar per column: the batch
    sizes unless ``columns`` maps other keys to their labels (a row without a column has no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["rows"] if "skipped" not in r]
    columns = columns or {str(b): f"batch {b}" for b in payload["settings"]["batches"]}
    fig, ax = plt.subplots(figsize=(1.6 * max(len(rows), 2) + 2, 4))
    width = 0.8 / len(columns)
    for j, (column, label) in enumerate(columns.items()):
        ax.bar([i + j * width for i in range(len(rows))], [r[key].get(column, float("nan")) for r in rows], width,
               label=label)
    ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in range(len(rows))], [r["variant"] for r in rows],
                  rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def case_table(cases: list[dict], base: str, digits: int = 3) -> list[str]:
    """Markdown lines: one row per case (``out``, ``in``, ``tokens``, ``sparsity``, ``ms``), each
    peer's ms and ``base ms / peer ms``, then the peers that could not run and why."""
    names = list(dict.fromkeys(n for c in cases for n in c["ms"]))
    lines = ["| out x in | tokens | sparsity | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for c in cases:
        ref = c["ms"].get(base)
        cells = [f"{c['ms'][n]:.{digits}f} ({ref / c['ms'][n]:.2f}x)" if n in c["ms"] and ref else "n/a" for n in names]
        lines.append(f"| {c['out']}x{c['in']} | {c['tokens']} | {c['sparsity']:.0%} | " + " | ".join(cells) + " |")
    skipped = {n: r for c in cases for n, r in c["skipped"].items()}
    if skipped:
        lines += ["", "Could not run here:", ""] + [f"- {n}: {r}" for n, r in skipped.items()]
    return lines
