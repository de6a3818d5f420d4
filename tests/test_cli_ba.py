"""``sparsa ba`` and ``sparsa sfm`` end to end (in-process)."""

from pathlib import Path

import pytest
import torch

from conftest import last_json, run_cli
from sparsa.data.colmap import read_colmap

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "bal_tiny.txt"
SMALL = "synthetic:cameras=6,points=120,seed=2"


def test_ba_synthetic_json_reports_the_contract_fields(capsys):
    code, out, _ = run_cli(capsys, "ba", SMALL, "--json", "--quiet")
    assert code == 0
    r = last_json(out)
    for key in ("initial_cost", "final_cost", "iterations", "seconds", "rmse_px"):
        assert key in r
    assert r["final_cost"] < 0.05 * r["initial_cost"] and r["termination"] == "CONVERGENCE"
    assert r["rmse_px"] < 0.75


def test_ba_table_prints_the_iteration_log(capsys):
    code, out, _ = run_cli(capsys, "ba", SMALL, "--quiet", "--linear-solver", "iterative_schur")
    assert code == 0
    assert "iter" in out and "iterative_schur" in out and "CONVERGENCE" in out


def test_ba_bal_file_writes_a_bal_result(capsys, tmp_path):
    out_file = tmp_path / "out.txt"
    code, out, _ = run_cli(capsys, "ba", str(FIXTURE), "--json", "--quiet", "-o", str(out_file))
    assert code == 0 and out_file.exists()
    assert last_json(out)["final_cost"] < last_json(out)["initial_cost"]


def test_ba_writes_a_colmap_model_that_reads_back(capsys, tmp_path):
    model = tmp_path / "model"
    code, out, _ = run_cli(capsys, "ba", SMALL, "--json", "--quiet", "-o", str(model), "--text")
    assert code == 0
    assert read_colmap(model).n_observations == last_json(out)["observations"]


@pytest.mark.parametrize("argv, message", [
    (["ba", "synthetic:cameras=6"], "missing points=N"),
    (["ba", "synthetic:cameras=6,points=50,colour=red"], "bad item 'colour=red'"),
    (["ba", "nothing/here.txt"], "no such file or directory"),
    (["ba", SMALL, "--loss-scale", "0"], "argument --loss-scale: got 0; expected a finite number > 0"),
    (["ba", SMALL, "--fix-images", "a,b"], "--fix-images 'a,b'"),
    (["ba", SMALL, "--fix-images", "99"], "--fix-images 99: outside [0, 6)"),
    (["sfm", SMALL, "--filter-px", "0"], "argument --filter-px: got 0; expected a finite number > 0"),
    (["ba", SMALL, "--device", "tpu"], "--device 'tpu': not a device; use cpu, cuda or cuda:N"),
    (["sfm", SMALL, "--device", "foo"], "--device 'foo': not a device; use cpu, cuda or cuda:N"),
    (["ba", SMALL, "--threads", "-2"], "argument --threads: got -2; expected an integer >= 1"),
    (["sfm", SMALL, "--threads", "0"], "argument --threads: got 0; expected an integer >= 1"),
    (["sfm", SMALL, "--gp-max-iters", "-5"], "argument --gp-max-iters: got -5; expected an integer >= 0"),
    (["sfm", SMALL, "--max-iters", "-1"], "argument --max-iters: got -1; expected an integer >= 0"),
    (["ba", SMALL, "--max-iters", "1.5"], "argument --max-iters: got '1.5'; expected an integer >= 0"),
    (["ba", SMALL, "--function-tolerance", "nan"], "argument --function-tolerance: got nan; expected a finite"),
    (["ba", SMALL, "--gradient-tolerance", "-1"], "argument --gradient-tolerance: got -1; expected a finite"),
    (["ba", SMALL, "--parameter-tolerance", "inf"], "argument --parameter-tolerance: got inf; expected a finite"),
    (["ba", SMALL, "--loss-scale", "nan"], "argument --loss-scale: got nan; expected a finite number > 0"),
    (["sfm", SMALL, "--loss-scale", "-1"], "argument --loss-scale: got -1; expected a finite number > 0"),
    (["sfm", SMALL, "--filter-px", "nan"], "argument --filter-px: got nan; expected a finite number > 0"),
    (["ba", "synthetic:cameras=5,cameras=6,points=50"], "cameras is given twice; give each key once"),
    (["ba", "synthetic:cameras=6,points=1e10,seed=1"], "GiB of memory to generate"),
])
def test_ba_bad_input_is_one_error_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code != 0 and out == ""
    assert err.startswith("sparsa: error:") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_ba_cuda_without_a_device_is_an_error(capsys):
    code, _, err = run_cli(capsys, "ba", SMALL, "--device", "cuda")
    assert code != 0 and "--device cuda: no CUDA device" in err


def test_ba_malformed_bal_names_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("2 1 1\n0 0 1.0\n")
    code, _, err = run_cli(capsys, "ba", str(bad))
    assert code != 0 and str(bad) in err


def test_sfm_recovers_positions_from_rotations(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "sfm", SMALL, "--json", "--quiet", "-o", str(tmp_path / "m"))
    assert code == 0
    r = last_json(out)
    assert r["centre_error"]["reference"] == "ground truth"
    assert r["centre_error"]["median"] < 0.1 and r["rmse_px"] < 0.75
    assert len(r["ba"]) == 3 and (tmp_path / "m" / "images.bin").exists()


def test_ba_single_camera_bal_says_no_point_has_two_views(capsys, tmp_path):
    one = tmp_path / "one.txt"  # one camera (9 BAL parameters), three points each seen once
    one.write_text("1 3 3\n0 0 1.0 2.0\n0 1 3.0 4.0\n0 2 -1.0 0.5\n" + "0.01\n0.02\n0.03\n0.1\n0.2\n-5\n500\n0\n0\n"
                   + "1\n2\n3\n-1\n0\n2\n0.5\n0.5\n1\n")
    code, _, err = run_cli(capsys, "ba", str(one), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no point is seen by two or more of the 1 image(s)" in err


def test_ba_synthetic_scene_too_big_for_memory_is_refused_before_allocating(capsys, monkeypatch):
    monkeypatch.setattr("sparsa.data.synthetic_scene.available_memory_bytes", lambda: 8 * 2**30)
    code, out, err = run_cli(capsys, "ba", "synthetic:cameras=100000000,points=50,seed=1")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "needs about 100.6 GiB of memory to generate" in err and "but 8.0 GiB is available" in err
