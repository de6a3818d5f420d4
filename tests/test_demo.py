"""The demo writes its table to a results file only when asked (make demo: bench/results)."""

import json

from sparsa import demo

ROWS = [{"model": "smollm2-135m (dense fp32)", "seconds": None, "ppl": {"wiki": 15.292}, "bytes": 1000,
         "params": 250, "bits_per_param": 32.0},
        {"model": "spqr 3-bit, tau 0.3 (reloaded)", "seconds": 71.25, "ppl": {"wiki": 18.4431}, "bytes": 123,
         "params": 250, "bits_per_param": 3.936}]


def test_run_demo_writes_json_and_markdown_only_with_out_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "demo_rows", lambda **kw: ROWS)
    assert demo.run_demo(ppl="wiki", progress=False) == ROWS
    assert not list(tmp_path.iterdir())
    demo.run_demo(ppl="wiki", out_dir=str(tmp_path), progress=False)
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert payload["rows"] == ROWS and payload["settings"]["ppl"] == "wiki" and payload["settings"]["bos"] == "auto"
    assert payload["machine"]["cores"] > 0
    md = (tmp_path / "demo.md").read_text()
    assert "| smollm2-135m (dense fp32) | 15.292 | 1,000 | 32.000 | - |" in md
    assert "| spqr 3-bit, tau 0.3 (reloaded) | 18.443 | 123 | 3.936 | 71.2 |" in md
