"""attention_sweep: the per-row top-k and optimum bounds and every selector's gap reach the JSON
rows, the markdown table and the figure."""

import json
from types import SimpleNamespace

from sparsa.attention.config import AnchorConfig
from sparsa.bench.attention_sweep import SELECTORS, write_sweep


def pooled(recall: float, density: float, gap: float | None, rel_err: float | None = 0.1) -> dict:
    m = {"recall": recall, "density": density, "kept_pairs": 10}
    if gap is not None:
        m["gap_to_optimum"] = gap
    if rel_err is not None:
        m.update(rel_err=rel_err, close_share=0.9)
    return m


def report(theta: float) -> SimpleNamespace:
    overall = {"anchor": pooled(0.97, 0.28, 0.0123), "vertical_slash": pooled(0.95, 0.28, 0.0345),
               "flex_blocks": pooled(0.90, 0.28, 0.0845), "streaming": pooled(0.84, 0.22, 0.0567),
               "per_row_topk": pooled(0.984, 0.2801, 0.0018, rel_err=None),
               "optimum": pooled(0.9823, 0.28, None, rel_err=None)}
    return SimpleNamespace(config=AnchorConfig(theta=theta), seqlen=4096, overall=overall)


def test_write_sweep_reports_bounds_and_gaps_in_json_markdown_and_figure(tmp_path):
    out = write_sweep([report(3.0), report(4.0)], tmp_path, model="m", device="cpu")
    assert [p.rsplit(".", 1)[1] for p in out["files"]] == ["json", "md", "png"]
    rows = json.loads((tmp_path / "attention_sweep.json").read_text())["rows"]
    assert [r["theta"] for r in rows] == [3.0, 4.0] and set(rows[0]) == {"theta", *SELECTORS}
    assert rows[0]["optimum"]["recall"] == 0.9823 and rows[0]["flex_blocks"]["gap_to_optimum"] == 0.0845
    md = (tmp_path / "attention_sweep.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| theta"))
    assert "per_row_topk recall" in header and "optimum recall" in header and "optimum gap" not in header
    assert header.count(" gap ") == 5  # anchor, vertical_slash, flex_blocks, per_row_topk, streaming
    assert "| 4 | 0.2800 | 0.9700 | 0.9500 | 0.9000 | 0.9840 | 0.9823 | 0.8400 | 0.0123 | 0.0345 | 0.0845 | " \
           "0.0018 | 0.0567 | 0.1000 |" in md
