"""The README's measured tables are exactly what ``python -m sparsa.bench.readme`` renders from bench/results."""

import json
from pathlib import Path

import pytest

from sparsa.bench import readme
from sparsa.errors import SparsaError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MACHINE = {"date": "2026-01-02", "cpu": "x86_64", "cores": 2, "torch": "2.13.0+cpu", "device": "cpu"}


def test_readme_blocks_match_bench_results():
    stale = readme.stale_blocks(REPO / "README.md", RESULTS)
    assert stale == [], f"README blocks {stale} differ from bench/results; run `python -m sparsa.bench.readme`"


def test_readme_every_renderer_has_a_block():
    names = {m["name"] for m in readme.BLOCK.finditer((REPO / "README.md").read_text())}
    assert names == set(readme.RENDERERS)


def _encoder_results(tmp_path: Path, ms_batch_1: float) -> Path:
    agreement = {"cosine_mean": 1.0, "cosine_min": 1.0, "topk_overlap": 1.0}
    rows = [{"variant": "dense torch fp32", "agreement": agreement, "ms": {"1": ms_batch_1, "8": 90.0},
             "x_dense": {"1": 1.0, "8": 1.0}}]
    (tmp_path / "encoder.json").write_text(json.dumps({"machine": MACHINE, "rows": rows}))
    return tmp_path


def _readme(tmp_path: Path, body: str = "stale\n", name: str = "encoder") -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\nbefore text\n\n<!-- results: {name} -->\n{body}<!-- /results -->\n\nafter text\n")
    return path


def test_update_stale_block_rewritten_outside_untouched(tmp_path):
    results, path = _encoder_results(tmp_path, 16.84), _readme(tmp_path)
    assert readme.stale_blocks(path, results) == ["encoder"]
    assert readme.update(path, results) == ["encoder"]
    text = path.read_text()
    assert text.startswith("# Title\n\nbefore text\n\n<!-- results: encoder -->\n")
    assert text.endswith("<!-- /results -->\n\nafter text\n")
    assert "| dense torch fp32 | 16.8 | 1.00x | 90.0 |" in text and "Measured 2026-01-02 on 2-core x86_64 CPU" in text
    assert "stale" not in text
    assert readme.stale_blocks(path, results) == [] and readme.update(path, results) == []


def test_check_new_results_make_block_stale(tmp_path):
    results, path = _encoder_results(tmp_path, 16.84), _readme(tmp_path)
    readme.update(path, results)
    _encoder_results(tmp_path, 17.5)
    assert readme.main(["--check", "--readme", str(path), "--results", str(results)]) == 1
    assert "| 16.8 |" in path.read_text()


def test_render_missing_results_file_names_it(tmp_path):
    with pytest.raises(SparsaError, match=r"encoder\.json: results file not found"):
        readme.stale_blocks(_readme(tmp_path), tmp_path)


def test_render_unknown_block_names_it(tmp_path):
    with pytest.raises(SparsaError, match="README block `nonesuch` has no renderer; known: .*quality"):
        readme.stale_blocks(_readme(tmp_path, name="nonesuch"), tmp_path)


def test_render_unclosed_block_errors(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("<!-- results: encoder -->\nno end marker\n")
    with pytest.raises(SparsaError, match="1 `<!-- results: NAME -->` markers but 0 blocks closed"):
        readme.stale_blocks(path, _encoder_results(tmp_path, 16.8))


def test_main_missing_results_exits_2_with_one_line(tmp_path, capsys):
    assert readme.main(["--readme", str(_readme(tmp_path)), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsa: error:") and "encoder.json" in err and err.count("\n") == 1
