import json

import pytest

from sparsa.bench.ba import (BABenchSettings, StoppingRules, add_target_columns, run_ba_bench, run_one,
                             seconds_to_target)

RULES = {"max_iterations": 100, "function_tolerance": 1e-10, "gradient_tolerance": 1e-10,
         "parameter_tolerance": 1e-8}


def test_run_ba_bench_runs_every_solver_under_the_same_rules_to_the_same_cost(tmp_path):
    pytest.importorskip("pycolmap")
    settings = BABenchSettings(scenes=((6, 120),), repeats=1, threads=1)
    payload = run_ba_bench(settings, out_dir=tmp_path, name="ba_test", progress=False)
    rows = {r["solver"]: r for r in payload["rows"]}
    assert {"sparsa", "pycolmap", "scipy"} <= set(rows)
    assert rows["sparsa"]["tolerances"] == RULES
    assert rows["pycolmap"]["tolerances"] == {"max_num_iterations": 100, **{k: v for k, v in RULES.items()
                                                                            if k != "max_iterations"}}
    assert rows["scipy"]["tolerances"] == {"max_nfev": 100, "ftol": 1e-10, "xtol": 1e-8, "gtol": 1e-10}
    best = min(r["final_cost"] for r in rows.values())
    for name, row in rows.items():
        assert abs(row["cost_rel_to_pycolmap"]) < 1e-6, name
        assert row["final_cost"] < 0.05 * row["initial_cost"] and row["seconds"] > 0
        assert row["peak_rss_bytes"] > 0
        # every solver reaches the target: the first logged time at or below it; the log starts at the start's cost
        target = best * (1 + settings.target_rel)
        assert row["seconds_to_target"] == next(t for t, c in row["log"] if c <= target) > 0, name
        assert row["log"][0][1] == pytest.approx(row["initial_cost"], rel=1e-9), name
        if name != "pycolmap":  # ours and scipy log the last timed solve; pycolmap's log is its capped reruns
            assert row["seconds_to_target"] <= row["seconds_all"][-1], name
        assert min(c for _, c in row["log"]) <= best * (1 + 1e-6), name
        assert 0 < row["seconds_per_iteration"] < row["seconds"], name
    colmap = [c for _, c in rows["pycolmap"]["log"]]
    assert colmap == sorted(colmap, reverse=True)  # more iterations allowed: never a higher cost
    assert json.loads((tmp_path / "ba_test.json").read_text())["rows"]
    md = (tmp_path / "ba_test.md").read_text()
    assert md.count("| 6 |") == len(payload["rows"])
    assert "function tolerance 1e-10, gradient tolerance 1e-10, parameter tolerance 1e-08" in md
    assert (tmp_path / "ba_test.png").stat().st_size > 0


def test_run_one_reports_the_median_of_repeats_and_times_problem_building():
    row = run_one("sparsa", "synthetic:cameras=4,points=60,seed=0", "cpu", 1, repeats=3)
    assert len(row["seconds_all"]) == 3 and row["seconds"] == sorted(row["seconds_all"])[1]
    assert row["log"][0][0] > 0  # the start's evaluation comes after building the problem, on the same timer
    assert row["tolerances"] == RULES


def test_run_one_passes_the_rules_to_our_solver():
    row = run_one("sparsa", "synthetic:cameras=4,points=60,seed=0", "cpu", 1,
                  rules=StoppingRules(max_iterations=1))
    assert row["iterations"] == 1 and row["tolerances"]["max_iterations"] == 1


def test_seconds_to_target_is_the_first_logged_time_at_or_below_it():
    log = [[0.1, 10.0], [0.2, 5.0], [0.3, 4.0], [0.4, 3.9]]
    assert seconds_to_target(log, 5.0) == 0.2
    assert seconds_to_target(log, 3.9) == 0.4
    assert seconds_to_target(log, 3.0) is None


def test_add_target_columns_per_iteration_time_leaves_out_the_start():
    rows = [{"log": [[1.0, 10.0], [2.0, 4.0], [3.0, 3.0]], "seconds": 3.5, "iterations": 2},
            {"log": [], "seconds": 2.0, "iterations": 0}]
    add_target_columns(rows, 3.0 * (1 + 1e-6))
    assert rows[0]["seconds_to_target"] == 3.0 and rows[0]["seconds_per_iteration"] == 1.25
    assert rows[1]["seconds_to_target"] is None and rows[1]["seconds_per_iteration"] is None
