"""BAL problem files: parsing, bit-exact round trips, malformed files and refused scenes."""

import bz2
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.data.bal import read_bal, write_bal
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from scene_asserts import assert_same_scene, error_at

FIXTURE = Path(__file__).parent / "fixtures" / "bal_tiny.txt"
# 2 cameras, 1 point, 2 observations; mixed whitespace on purpose.
HANDWRITTEN = """2 1 2
0 0   -1.5 2.25
1 0\t3e1 -4.0E-1
0.1 0.2 0.3  1 2 3  500 -0.05 0.01
0 0 0 0 0 -10 450.5 0 0
1.5
-2.5 7
"""


def bal_scene(K: int = 3, P: int = 4, M: int = 7, seed: int = 0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    rotations = torch.randn(K, 3, generator=g, dtype=torch.float64)
    rotations[0] = torch.tensor([-0.0, 1e-300, 5e-324])  # signed zero, tiny and subnormal values
    return Scene(model="BAL", intrinsics=torch.rand(K, 3, generator=g, dtype=torch.float64) * 1000 / 3,
                 image_camera=torch.arange(K), rotations=rotations, rotation_format="angle_axis",
                 translations=torch.randn(K, 3, generator=g, dtype=torch.float64) * 1e10,
                 points=torch.randn(P, 3, generator=g, dtype=torch.float64),
                 obs_image=torch.randint(0, K, (M,), generator=g), obs_point=torch.randint(0, P, (M,), generator=g),
                 obs_xy=torch.randn(M, 2, generator=g, dtype=torch.float64) * 300)


def test_read_bal_handwritten_file_parses_expected_values(tmp_path):
    path = tmp_path / "problem.txt"
    path.write_text(HANDWRITTEN)
    scene = read_bal(path)
    assert (scene.model, scene.rotation_format) == ("BAL", "angle_axis")
    assert torch.equal(scene.image_camera, torch.tensor([0, 1]))
    assert torch.equal(scene.obs_image, torch.tensor([0, 1])) and torch.equal(scene.obs_point, torch.tensor([0, 0]))
    assert torch.equal(scene.obs_xy, torch.tensor([[-1.5, 2.25], [30.0, -0.4]], dtype=torch.float64))
    assert torch.equal(scene.rotations, torch.tensor([[0.1, 0.2, 0.3], [0, 0, 0]], dtype=torch.float64))
    assert torch.equal(scene.translations, torch.tensor([[1, 2, 3], [0, 0, -10]], dtype=torch.float64))
    assert torch.equal(scene.intrinsics, torch.tensor([[500, -0.05, 0.01], [450.5, 0, 0]], dtype=torch.float64))
    assert torch.equal(scene.points, torch.tensor([[1.5, -2.5, 7]], dtype=torch.float64))
    assert scene.camera_ids is None and scene.image_names is None and scene.point_colors is None


def test_read_bal_fixture_reprojects_within_noise():
    scene = read_bal(FIXTURE)
    assert (scene.n_cameras, scene.n_images, scene.n_points, scene.n_observations) == (3, 3, 7, 19)
    assert scene.obs_xy[0].tolist() == [-5.171307e+01, 7.550237e+01]
    R = scene.rotation_matrices()[scene.obs_image]
    X = (R @ scene.points[scene.obs_point][:, :, None]).squeeze(-1) + scene.translations[scene.obs_image]
    assert bool((X[:, 2] < 0).all())  # BAL cameras look down -z
    p = -X[:, :2] / X[:, 2:]
    f, k1, k2 = scene.intrinsics[scene.obs_image].unbind(-1)
    r2 = (p * p).sum(-1)
    pixels = (f * (1 + k1 * r2 + k2 * r2 * r2))[:, None] * p
    assert float((pixels - scene.obs_xy).norm(dim=-1).max()) < 2.0  # synthetic noise: sigma 0.3 px


@pytest.mark.parametrize("suffix", [".txt", ".bz2"])
def test_write_bal_then_read_bal_round_trip_is_bit_exact(tmp_path, suffix):
    scene = bal_scene()
    path = tmp_path / f"problem{suffix}"
    write_bal(scene, path)
    assert (path.read_bytes()[:3] == b"BZh") == (suffix == ".bz2")
    assert_same_scene(read_bal(path), scene)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_write_bal_fixture_round_trip_is_bit_exact(tmp_path):
    scene = read_bal(FIXTURE)
    write_bal(scene, tmp_path / "copy.txt")
    assert_same_scene(read_bal(tmp_path / "copy.txt"), scene)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 3), P=st.integers(1, 4), data=st.data(), suffix=st.sampled_from([".txt", ".bz2"]))
def test_write_bal_random_scenes_round_trip_bit_exact(K, P, data, suffix):
    M = data.draw(st.integers(0, 8))

    def values(n: int, elements=finite, dtype=torch.float64) -> torch.Tensor:
        return torch.tensor(data.draw(st.lists(elements, min_size=n, max_size=n)), dtype=dtype)

    scene = Scene(model="BAL", intrinsics=values(3 * K).view(K, 3), image_camera=torch.arange(K),
                  rotations=values(3 * K).view(K, 3), rotation_format="angle_axis",
                  translations=values(3 * K).view(K, 3), points=values(3 * P).view(P, 3),
                  obs_image=values(M, st.integers(0, K - 1), torch.int64),
                  obs_point=values(M, st.integers(0, P - 1), torch.int64), obs_xy=values(2 * M).view(M, 2))
    with tempfile.TemporaryDirectory() as tmp:
        write_bal(scene, Path(tmp) / f"scene{suffix}")
        assert_same_scene(read_bal(Path(tmp) / f"scene{suffix}"), scene)


@pytest.mark.parametrize("text, message", [
    ("2 1", "the header needs 3 numbers"),
    ("2 1 -2\n", "is not three non-negative integers"),
    (HANDWRITTEN + "8\n", "header declares 2 cameras, 1 points and 2 observations (32 values), but the file holds 33"),
    (HANDWRITTEN.replace("-2.5 7", "-2.5"), "(32 values), but the file holds 31"),
    (HANDWRITTEN.replace("450.5", "f=450"), "line 5: 'f=450' is not a number"),
    (HANDWRITTEN.replace("1 0\t3e1", "5 0\t3e1"), "observation 1 has camera index 5, but the header declares 2 cam"),
    (HANDWRITTEN.replace("0 0   -1.5", "0 -1   -1.5"), "observation 0 has point index -1, but the header declares 1 p"),
    (HANDWRITTEN.replace("0 0   -1.5", "0.5 0   -1.5"), "observation 0 has camera index 0.5"),
    (HANDWRITTEN.replace("450.5", "nan"), "camera 1 holds a non-finite value"),
    (HANDWRITTEN.replace("2.25", "inf"), "observation 0 holds a non-finite value"),
    (HANDWRITTEN.replace("-2.5", "-inf"), "point 0 holds a non-finite value"),
])
def test_read_bal_malformed_file_raises_naming_file(tmp_path, text, message):
    path = tmp_path / "problem.txt"
    path.write_text(text)
    with pytest.raises(SparsaError, match=error_at(path, message)):
        read_bal(path)


def test_read_bal_missing_file_raises(tmp_path):
    with pytest.raises(SparsaError, match=error_at(tmp_path / "absent.txt", "cannot read BAL file")):
        read_bal(tmp_path / "absent.txt")


@pytest.mark.parametrize("data, message", [(b"not bzip2 at all", "cannot read BAL file"),
                                           (bz2.compress(HANDWRITTEN.encode())[:40], "truncated")])
def test_read_bal_corrupt_bz2_raises(tmp_path, data, message):
    path = tmp_path / "problem.bz2"
    path.write_bytes(data)
    with pytest.raises(SparsaError, match=error_at(path, message)):
        read_bal(path)


@pytest.mark.parametrize("change, message", [
    (dict(model="PINHOLE", intrinsics=torch.ones(3, 4, dtype=torch.float64)), "not PINHOLE"),
    (dict(rotation_format="quaternion", rotations=torch.ones(3, 4, dtype=torch.float64)), "not quaternion"),
    (dict(image_camera=torch.tensor([0, 0, 1])), "image_camera is not arange(3)"),
])
def test_write_bal_non_bal_scene_raises_and_writes_nothing(tmp_path, change, message):
    path = tmp_path / "out.txt"
    with pytest.raises(SparsaError, match=error_at(path, message)):
        write_bal(bal_scene().replace(**change), path)
    assert os.listdir(tmp_path) == []


def test_write_bal_failed_rename_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "problem.txt"
    path.write_text("old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SparsaError, match=error_at(path, "cannot write (No space left")):
        write_bal(bal_scene(), path, force=True)
    assert os.listdir(tmp_path) == ["problem.txt"] and path.read_text() == "old"


def test_write_bal_existing_file_without_force_refuses(tmp_path):
    path = tmp_path / "problem.txt"
    path.write_text("mine")
    with pytest.raises(SparsaError, match=error_at(path, "exists")):
        write_bal(bal_scene(), path)
    assert os.listdir(tmp_path) == ["problem.txt"] and path.read_text() == "mine"


def test_write_bal_missing_directory_is_created(tmp_path):
    path = tmp_path / "absent" / "problem.txt"
    write_bal(bal_scene(), path)
    assert read_bal(path).n_observations == bal_scene().n_observations


def test_write_bal_under_a_file_names_the_path(tmp_path):
    (tmp_path / "afile").write_text("mine")
    path = tmp_path / "afile" / "problem.txt"
    with pytest.raises(SparsaError, match=error_at(path, "is not a directory")):
        write_bal(bal_scene(), path)
    assert os.listdir(tmp_path) == ["afile"]
