"""COLMAP sparse models: bit-exact round trips, agreement with pycolmap, malformed models."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsa.data.colmap import read_colmap, write_colmap
from sparsa.data.rotations import angle_axis_to_matrix
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from scene_asserts import assert_same_scene, error_at


def colmap_scene() -> Scene:
    """2 PINHOLE cameras, 3 images, 6 points (the last unobserved), observations grouped by image."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64)
    obs_image = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    xy = torch.rand(9, 2, generator=g, dtype=torch.float64) * 640
    xy[0, 0] = 1 / 3
    return Scene(model="PINHOLE",
                 intrinsics=torch.tensor([[500.0, 510.5, 320.0, 240.0], [1e-300, 700.25, -0.0, 239.5]],
                                         dtype=torch.float64),
                 image_camera=torch.tensor([1, 0, 1]), rotations=q / q.norm(dim=1, keepdim=True),
                 rotation_format="quaternion", translations=torch.randn(3, 3, generator=g, dtype=torch.float64),
                 points=torch.randn(6, 3, generator=g, dtype=torch.float64), obs_image=obs_image,
                 obs_point=torch.tensor([0, 2, 4, 1, 0, 3, 4, 4, 2]), obs_xy=xy,
                 camera_sizes=torch.tensor([[640, 480], [1024, 768]]), camera_ids=torch.tensor([7, 3]),
                 image_ids=torch.tensor([12, 10, 11]), point_ids=torch.tensor([100, 5, 7, 8, 9, 2**40]),
                 image_names=["a.jpg", "dir/b.png", "c"],
                 point_colors=torch.randint(0, 256, (6, 3), generator=g, dtype=torch.uint8))


def pycolmap_model(tmp_path: Path, binary: bool):
    pycolmap = pytest.importorskip("pycolmap")
    options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_frames_per_rig=5, num_points3D=50)
    rec = pycolmap.synthesize_dataset(options)
    (tmp_path / "model").mkdir()
    (rec.write_binary if binary else rec.write_text)(str(tmp_path / "model"))
    return pycolmap, rec, tmp_path / "model"


def assert_matches_pycolmap(scene: Scene, rec) -> None:
    assert scene.n_points == rec.num_points3D() and scene.n_observations == rec.compute_num_observations()
    for k, camera_id in enumerate(scene.camera_ids.tolist()):
        camera = rec.cameras[camera_id]
        assert camera.model.name == scene.model and np.array_equal(camera.params, scene.intrinsics[k].numpy())
        assert [camera.width, camera.height] == scene.camera_sizes[k].tolist()
    for i, image_id in enumerate(scene.image_ids.tolist()):
        image, pose = rec.images[image_id], rec.images[image_id].cam_from_world()
        x, y, z, w = pose.rotation.quat  # pycolmap stores (x, y, z, w)
        assert scene.rotations[i].tolist() == [w, x, y, z]
        assert np.array_equal(pose.translation, scene.translations[i].numpy())
        assert image.name == scene.image_names[i] and image.num_points3D == int((scene.obs_image == i).sum())
    for j, point_id in enumerate(scene.point_ids.tolist()):
        point = rec.points3D[point_id]
        assert np.array_equal(point.xyz, scene.points[j].numpy()) and point.track.length() == int(
            (scene.obs_point == j).sum())


@pytest.mark.parametrize("binary", [True, False])
def test_write_colmap_then_read_colmap_round_trip_is_bit_exact(tmp_path, binary):
    scene = colmap_scene()
    write_colmap(scene, tmp_path / "model", binary=binary)
    suffix = ".bin" if binary else ".txt"
    assert sorted(os.listdir(tmp_path / "model")) == [f"cameras{suffix}", f"images{suffix}", f"points3D{suffix}",
                                                      "sparsa-colmap.json"]
    assert_same_scene(read_colmap(tmp_path / "model"), scene)


def test_write_colmap_angle_axis_scene_without_ids_reads_back_generated_ids(tmp_path):
    scene = colmap_scene()
    aa = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [2.0, 1.0, -0.5]], dtype=torch.float64)
    bare = scene.replace(rotations=aa, rotation_format="angle_axis", camera_ids=None, image_ids=None, point_ids=None,
                         image_names=None, camera_sizes=None, point_colors=None)
    write_colmap(bare, tmp_path / "model", binary=False)
    back = read_colmap(tmp_path / "model")
    assert back.rotation_format == "quaternion"
    assert torch.allclose(back.rotation_matrices(), angle_axis_to_matrix(aa), atol=1e-14)
    assert back.camera_ids.tolist() == [1, 2] and back.image_ids.tolist() == [1, 2, 3]
    assert back.point_ids.tolist() == [1, 2, 3, 4, 5, 6] and back.image_names == ["image_1", "image_2", "image_3"]
    assert back.camera_sizes.tolist() == [[640, 480], [1, 479]] and not bool(back.point_colors.any())
    assert torch.equal(back.obs_xy, scene.obs_xy) and torch.equal(back.obs_point, scene.obs_point)


@pytest.mark.parametrize("binary", [True, False])
def test_read_colmap_pycolmap_model_matches_pycolmap_values(tmp_path, binary):
    _, rec, model = pycolmap_model(tmp_path, binary)
    assert {"rigs", "frames"} <= {p.stem for p in model.iterdir()}  # COLMAP 4 extras, ignored
    scene = read_colmap(model)
    assert scene.model == "SIMPLE_RADIAL" and scene.rotation_format == "quaternion"
    # the synthetic images also hold untriangulated keypoints; they are not observations
    assert sum(rec.images[i].num_points2D() for i in rec.images) > scene.n_observations
    assert_matches_pycolmap(scene, rec)


@pytest.mark.parametrize("binary", [True, False])
def test_write_colmap_pycolmap_reads_back_same_values(tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    scene = colmap_scene()
    write_colmap(scene, tmp_path / "ours", binary=binary)
    assert_matches_pycolmap(scene, pycolmap.Reconstruction(str(tmp_path / "ours")))


@pytest.mark.parametrize("binary", [True, False])
def test_write_colmap_pycolmap_model_round_trip_is_bit_exact(tmp_path, binary):
    _, _, model = pycolmap_model(tmp_path, binary)
    scene = read_colmap(model)
    write_colmap(scene, tmp_path / "copy", binary=not binary)
    assert_same_scene(read_colmap(tmp_path / "copy"), scene)


def edit_text(path: Path, line: int, old: str, new: str) -> None:
    """Replace the first ``old`` by ``new`` in the ``line``-th non-comment line of ``path``."""
    lines = path.read_text().split("\n")
    data = [i for i, text in enumerate(lines) if not text.startswith("#")]
    assert old in lines[data[line]]
    lines[data[line]] = lines[data[line]].replace(old, new, 1)
    path.write_text("\n".join(lines))


@pytest.mark.parametrize("file, line, old, new, raised_by, message", [
    ("cameras.txt", 1, "PINHOLE", "OPENCV", "cameras.txt", "camera 7 is PINHOLE but camera 3 is OPENCV"),
    ("cameras.txt", 0, "PINHOLE", "FULL_OPENCV", "cameras.txt", "camera 7 uses the FULL_OPENCV model, which sparsa"),
    ("cameras.txt", 0, "PINHOLE", "BAL", "cameras.txt", "camera 7 uses the BAL model"),
    ("cameras.txt", 0, "240.0", "240.0 1.5", "cameras.txt", "camera 7 (PINHOLE) has 5 parameters, expected 4"),
    ("cameras.txt", 0, "640", "wide", "cameras.txt", "line 2: invalid literal for int()"),
    ("images.txt", 0, "12 ", "10 ", "images.txt", "image id 10 appears more than once"),
    ("images.txt", 0, " 3 a.jpg", " 9 a.jpg", "images.txt", "image 12 uses camera 9, which cameras.txt does not hold"),
    ("images.txt", 1, " 100", "", "images.txt", "line 3: 8 values, not (X, Y, POINT3D_ID) triples"),
    ("images.txt", 1, " 100", " -1", "points3D.txt",
     "point 100's track names image 12 keypoint 0, which links to point -1 there in images.txt"),
    ("images.txt", 3, " 5 ", " 8 ", "points3D.txt",
     "point 5's track names image 10 keypoint 0, which links to point 8 there in images.txt"),
    ("images.txt", 1, " 398.0193591548977", " inf", "images.txt", "1 non-finite values"),
    ("points3D.txt", 0, " 12 0", " 13 0", "points3D.txt",
     "point 100's track names image 13 keypoint 0, which does not exist in images.txt"),
    ("points3D.txt", 0, " 12 0", " 12 9", "points3D.txt", "point 100's track names image 12 keypoint 9, which does"),
    ("points3D.txt", 0, " 10 1", " 12 0", "points3D.txt", "point 100's track names image 12 keypoint 0 twice"),
    ("points3D.txt", 0, " 10 1", "", "images.txt",
     "image 10 keypoint 1 links to point 100, but no track in points3D.txt names it"),
    ("points3D.txt", 5, "1099511627776 ", "100 ", "points3D.txt", "point id 100 appears more than once"),
    ("points3D.txt", 1, " 0.8653897078648778", " nan", "points3D.txt", "1 non-finite values"),
    ("points3D.txt", 2, " 12 1", " 12", "points3D.txt", "line 4: the track is not (IMAGE_ID, POINT2D_IDX) pairs"),
    ("points3D.txt", 2, " 186 ", " 256 ", "points3D.txt", "line 4: colour [256, 127, 23] is outside 0..255"),
])
def test_read_colmap_malformed_text_raises_naming_file(tmp_path, file, line, old, new, raised_by, message):
    write_colmap(colmap_scene(), tmp_path / "model", binary=False)
    edit_text(tmp_path / "model" / file, line, old, new)
    with pytest.raises(SparsaError, match=error_at(tmp_path / "model" / raised_by, message)):
        read_colmap(tmp_path / "model")


@pytest.mark.parametrize("file, cut, message", [
    ("points3D.bin", -3, "truncated: point 5 needs 51 bytes"),
    ("points3D.bin", -60, "truncated: point 9's track needs 24 bytes"),
    ("images.bin", -100, "truncated"),
    ("cameras.bin", 4, "truncated: the camera count needs 8 bytes"),
])
def test_read_colmap_truncated_binary_raises_naming_file(tmp_path, file, cut, message):
    write_colmap(colmap_scene(), tmp_path / "model")
    path = tmp_path / "model" / file
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SparsaError, match=error_at(path, message)):
        read_colmap(tmp_path / "model")


def test_read_colmap_binary_trailing_bytes_raise(tmp_path):
    write_colmap(colmap_scene(), tmp_path / "model")
    path = tmp_path / "model" / "images.bin"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(SparsaError, match=error_at(path, "1 unexpected bytes after the last image")):
        read_colmap(tmp_path / "model")


def test_read_colmap_binary_unsupported_model_id_raises(tmp_path):
    write_colmap(colmap_scene(), tmp_path / "model")
    path = tmp_path / "model" / "cameras.bin"
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 12, 6)  # the first camera's model id: FULL_OPENCV
    path.write_bytes(bytes(data))
    with pytest.raises(SparsaError, match=error_at(path, "camera 7 uses COLMAP model id 6, which sparsa does not")):
        read_colmap(tmp_path / "model")


def test_read_colmap_missing_file_raises_naming_it(tmp_path):
    write_colmap(colmap_scene(), tmp_path / "model")
    (tmp_path / "model" / "points3D.bin").unlink()
    with pytest.raises(SparsaError, match=error_at(tmp_path / "model", "not a COLMAP model: missing points3D.bin")):
        read_colmap(tmp_path / "model")
    with pytest.raises(SparsaError, match=error_at(tmp_path / "absent", "no such COLMAP model directory")):
        read_colmap(tmp_path / "absent")


@pytest.mark.parametrize("change, binary, message", [
    (dict(model="BAL", intrinsics=torch.ones(2, 3, dtype=torch.float64)), True, "COLMAP has no BAL camera model"),
    (dict(image_names=["a.jpg", "with space.jpg", "c"]), False, "image name 'with space.jpg' cannot be written"),
    (dict(image_ids=torch.tensor([1, 2, 1])), True, "COLMAP needs unique image ids"),
    (dict(camera_ids=torch.tensor([-1, 3])), False, "COLMAP needs unique camera ids in [0, 4294967295)"),
])
def test_write_colmap_unwritable_scene_raises_and_keeps_old_model(tmp_path, change, binary, message):
    write_colmap(colmap_scene(), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    with pytest.raises(SparsaError, match=error_at(tmp_path / "model", message)):
        write_colmap(colmap_scene().replace(**change), tmp_path / "model", binary=binary)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert os.listdir(tmp_path) == ["model"]


def test_write_colmap_failure_midway_keeps_old_model_and_no_temporary(tmp_path, monkeypatch):
    write_colmap(colmap_scene(), tmp_path / "model", binary=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    write_bytes = Path.write_bytes

    def failing(self, data):
        if self.name.startswith("points3D"):
            raise OSError(28, "No space left on device")
        return write_bytes(self, data)
    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(SparsaError, match=error_at(tmp_path / "model", "cannot write (No space left on device)")):
        write_colmap(colmap_scene(), tmp_path / "model")
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert os.listdir(tmp_path) == ["model"]
