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
    (["ba", SMALL, "--loss-scale", "0"], "--loss-scale 0.0: must be > 0"),
    (["ba", SMALL, "--fix-images", "a,b"], "--fix-images 'a,b'"),
    (["ba", SMALL, "--fix-images", "99"], "--fix-images 99: outside [0, 6)"),
    (["sfm", SMALL, "--filter-px", "0"], "--filter-px 0.0: must be > 0"),
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
