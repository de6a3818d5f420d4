"""bench sfm: the scene generator, the accuracy metrics, and a whole run on a small scene."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import last_json, run_cli
from sparsa.bench.sfm_metrics import accuracy, auc
from sparsa.bench.sfm_scenes import SfmSceneSpec, candidate_pairs, make_scene, pair_matches
from sparsa.data.rotations import angle_axis_to_matrix, matrix_to_quaternion
from sparsa.sfm.ba import scene_residuals


def test_scene_keypoints_are_noisy_projections_and_tracks_are_local():
    spec = SfmSceneSpec(40, seed=1)
    truth, keypoints, owners = make_scene(spec)
    assert scene_residuals(truth).abs().max() < 1e-9  # observations are exact projections
    lengths = torch.bincount(truth.obs_point)
    assert 2 <= lengths.float().mean() <= 12 and lengths.max() < 20  # about ten neighbouring views, not all 40
    for i in (0, 17):
        mine = truth.obs_image == i
        by_point = dict(zip(truth.obs_point[mine].tolist(), truth.obs_xy[mine].numpy()))
        seen = owners[i] >= 0
        assert seen.sum() == mine.sum() and (~seen).sum() == spec.clutter
        noise = keypoints[i][seen] - np.stack([by_point[p] for p in owners[i][seen]])
        assert abs(noise.std() - spec.pixel_noise) < 0.15 and np.abs(noise).max() < 6 * spec.pixel_noise


def test_pair_matches_hold_the_shared_points_and_outliers_at_the_ratio():
    rng = np.random.default_rng(0)
    owner_i = np.concatenate([np.arange(100), np.full(20, -1)])  # points 0-99 and 20 clutter keypoints
    owner_j = np.concatenate([np.arange(70, 200), np.full(20, -1)])  # points 70-199: 30 shared
    rng.shuffle(owner_i), rng.shuffle(owner_j)
    m = pair_matches(owner_i, owner_j, 5, 0.7, rng)
    inliers = (owner_i[m[:, 0]] == owner_j[m[:, 1]]) & (owner_i[m[:, 0]] >= 0)
    assert sorted(owner_i[m[inliers, 0]].tolist()) == list(range(70, 100))  # every shared point, once
    assert len(m) == len(np.unique(m, axis=0)) and abs(len(m) - 30 / 0.7) <= 1  # 13 random outliers
    assert pair_matches(owner_i, owner_j, 50, 0.7, rng) is None
    pairs = candidate_pairs(10, 3)
    assert len(pairs) == len(set(pairs)) == 30 and all(i < j for i, j in pairs)


def test_accuracy_is_invariant_to_a_similarity_and_counts_unregistered_images():
    truth, _, _ = make_scene(SfmSceneSpec(20, seed=2))
    G = angle_axis_to_matrix(torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64))
    s, shift = 2.5, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    R = truth.rotation_matrices() @ G.T  # world' = s G world + shift: R' = R Gᵀ, t' = s t - R' shift
    t = s * truth.translations - R @ shift
    moved = truth.replace(rotations=matrix_to_quaternion(R), translations=t)
    a = accuracy(moved, truth)
    assert a["images"] == 20 and a["rotation_error_deg"]["median"] < 1e-4 and a["centre_error"]["p90"] < 1e-9
    assert a["auc"]["1"] > 0.999
    keep = torch.arange(20) != 3
    fewer = moved.replace(rotations=moved.rotations[keep], translations=moved.translations[keep],
                          image_camera=moved.image_camera[keep], image_ids=moved.image_ids[keep],
                          image_names=[n for k, n in enumerate(moved.image_names) if k != 3],
                          obs_image=torch.zeros(0, dtype=torch.int64), obs_point=torch.zeros(0, dtype=torch.int64),
                          obs_xy=torch.zeros(0, 2, dtype=torch.float64))
    b = accuracy(fewer, truth)
    assert b["images"] == 19 and b["auc"]["5"] == pytest.approx(1 - 19 / (20 * 19 / 2), abs=1e-3)


def test_auc_of_uniform_errors():
    errors = torch.linspace(0, 10, 10001, dtype=torch.float64)  # recall(e) = e / 10
    assert auc(errors, 5.0) == pytest.approx(0.25, abs=1e-3)  # ∫0^5 e/10 de / 5
    assert auc(torch.full((4,), math.inf), 1.0) == 0.0


def test_bench_sfm_runs_both_mappers_and_reports_the_acceptance_fields(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSA_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, "bench", "sfm", "--sizes", "24", "--pixel-images", "10", "--out",
                             str(tmp_path / "results"), "--json", "--quiet")
    assert code == 0, err
    rows = {(r["kind"], r["solver"]): r for r in last_json(out)["rows"]}
    assert set(rows) == {(kind, solver) for kind in ("ring", "pixels") for solver in ("sparsa", "pycolmap")}
    for (kind, _), r in rows.items():
        assert r["images"] == r["images_truth"] == {"ring": 24, "pixels": 10}[kind], r
        assert r["rotation_error_deg"]["median"] < 1.0 and r["centre_error"]["median"] < 0.5 and r["seconds"] > 0
    assert {p.name for p in (tmp_path / "results").iterdir()} == {"sfm.json", "sfm.md", "sfm.png"}
    payload = json.loads((tmp_path / "results" / "sfm.json").read_text())
    assert payload["settings"]["sizes"] == [24] and "| ring | 24 | sparsa | cpu | 24 |" in (tmp_path / "results" / "sfm.md").read_text()
