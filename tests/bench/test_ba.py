import json

import pytest

from sparsa.bench.ba import BABenchSettings, run_ba_bench, run_one


def test_run_ba_bench_writes_every_solver_at_the_same_cost(tmp_path):
    pytest.importorskip("pycolmap")
    settings = BABenchSettings(scenes=((6, 120),), repeats=1, threads=1)
    payload = run_ba_bench(settings, out_dir=tmp_path, name="ba_test", progress=False)
    solvers = {r["solver"] for r in payload["rows"]}
    assert {"sparsa", "pycolmap", "scipy"} <= solvers
    for row in payload["rows"]:
        assert abs(row["cost_rel_to_pycolmap"]) < 1e-6, row["solver"]
        assert row["final_cost"] < 0.05 * row["initial_cost"] and row["seconds"] > 0
        assert row["peak_rss_bytes"] > 0
    assert json.loads((tmp_path / "ba_test.json").read_text())["rows"]
    assert (tmp_path / "ba_test.md").read_text().count("| 6 |") == len(payload["rows"])
    assert (tmp_path / "ba_test.png").stat().st_size > 0


def test_run_one_reports_the_median_of_repeats():
    row = run_one("sparsa", "synthetic:cameras=4,points=60,seed=0", "cpu", 1, repeats=3)
    assert len(row["seconds_all"]) == 3 and row["seconds"] == sorted(row["seconds_all"])[1]
