"""Global SfM end to end on a 30-image database from pycolmap.synthesize_dataset, against its ground truth."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pycolmap
import pytest
import torch

from sparsa.data.colmap import read_colmap
from sparsa.data.colmap_db import MAX_IMAGE_ID, read_database
from sparsa.sfm.align import centre_errors, camera_centres
from sparsa.sfm.config import MAPPER_BA_OPTIONS, MAPPER_GP_OPTIONS, GlobalMapperOptions
from sparsa.sfm.global_mapper import map_database
from sparsa.sfm.view_graph import rotation_angles

SPARSA = str(Path(sys.executable).with_name("sparsa"))


def truth_for(scene, truth):
    """The ground-truth scene restricted to ``scene``'s images, in its order."""
    row = {int(i): k for k, i in enumerate(truth.image_ids)}
    rows = torch.tensor([row[int(i)] for i in scene.image_ids])
    return truth.replace(rotations=truth.rotations[rows], translations=truth.translations[rows],
                         image_camera=truth.image_camera[rows], image_ids=truth.image_ids[rows])


def test_thirty_images_registered_with_ground_truth_accuracy(colmap_database):
    database, truth_dir = colmap_database
    scene, report = map_database(read_database(database), GlobalMapperOptions(), MAPPER_GP_OPTIONS, MAPPER_BA_OPTIONS)
    truth = truth_for(scene, read_colmap(truth_dir))
    assert report["images"] == scene.n_images == 30 and report["images_left_out"] == 0
    R, Rt = scene.rotation_matrices(), truth.rotation_matrices()
    gauge = R[0].T @ Rt[0]
    rotation_error = rotation_angles((R @ gauge).transpose(1, 2) @ Rt)
    centres = camera_centres(truth)
    extent = (centres - centres.mean(0)).norm(dim=1).median()
    centre_error = centre_errors(scene, truth)
    figures = f"rotation error median {rotation_error.median():.4f} deg, centre error median " \
              f"{centre_error.median() / extent:.2e} of the extent"
    assert rotation_error.median() < 0.1 and centre_error.median() < 0.01 * extent, figures
    assert report["rmse_px"] < 2.0  # 1 px of pixel noise: sqrt(2) expected
    assert [s["stage"] for s in report["stages"]] == [
        "relative poses", "view graph", "rotation averaging", "tracks", "global positioning", "bundle adjustment",
        "retriangulation", "final bundle adjustment"]
    assert all(s["seconds"] >= 0 for s in report["stages"]) and report["peak_memory_bytes"] > 0


def edit(database, tmp_path, sql: str) -> Path:
    path = tmp_path / "database.db"
    shutil.copy(database, path)
    con = sqlite3.connect(path)
    con.executescript(sql)
    con.commit()
    con.close()
    return path


def sparsa(*argv):
    return subprocess.run([SPARSA, *argv], capture_output=True, text=True, timeout=600)


def test_acceptance_sfm_database_writes_a_model_pycolmap_reads_with_every_image(colmap_database, tmp_path):
    """The issue's acceptance command: ``sparsa sfm DB -o OUT`` on a synthesize_dataset database."""
    out = tmp_path / "out"
    proc = sparsa("sfm", str(colmap_database[0]), "-o", str(out), "--text")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 of 30 images registered (0 left out)" in proc.stdout and f"wrote {out}" in proc.stdout
    model = pycolmap.Reconstruction(str(out))
    assert model.num_reg_images() == 30 and (out / "images.txt").is_file()


def test_cli_writes_a_model_pycolmap_reads_and_left_out_images_are_counted(colmap_database, tmp_path):
    """Images 21-30 share no pair with images 1-20: the larger component is reconstructed."""
    cut = f"pair_id / {MAX_IMAGE_ID} <= 20 AND pair_id % {MAX_IMAGE_ID} > 20"
    database = edit(colmap_database[0], tmp_path, f"DELETE FROM two_view_geometries WHERE {cut};")
    out = tmp_path / "model"
    proc = sparsa("sfm", str(database), "-o", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["images"] == 20 and report["images_left_out"] == 10 and report["out"] == str(out)
    model = pycolmap.Reconstruction(str(out))
    assert model.num_reg_images() == 20 and model.num_points3D() == report["points"]
    assert {img.name for img in model.images.values()} == {f"camera000001_frame{i:06d}.png" for i in range(20)}


def test_all_degenerate_pairs_is_one_error_and_no_output(colmap_database, tmp_path):
    database = edit(colmap_database[0], tmp_path, "UPDATE two_view_geometries SET config = 1;")
    out = tmp_path / "model"
    proc = sparsa("sfm", str(database), "-o", str(out))
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.startswith("sparsa: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "none of its 435 pairs" in proc.stderr


def test_a_run_that_would_not_fit_in_memory_is_refused_before_positioning(colmap_database, monkeypatch):
    from sparsa.errors import SparsaError
    from sparsa.sfm import global_mapper

    monkeypatch.setattr(global_mapper, "available_memory_bytes", lambda: 100 * 2**20)
    monkeypatch.setattr(global_mapper, "solve_gp", lambda *a, **k: pytest.fail("GP ran"))
    with pytest.raises(SparsaError, match=r"30 images and 9,000 track observations need about 0\.\d GiB of memory, "
                                          r"but 0\.1 GiB is available; --max-tracks caps the tracks"):
        map_database(read_database(colmap_database[0]), GlobalMapperOptions(), MAPPER_GP_OPTIONS, MAPPER_BA_OPTIONS)
