"""Refining a COLMAP model in place: only the model files change, and COLMAP reads the refined values."""

import os
import struct

import numpy as np
import pycolmap
import pytest
import torch
from scene_asserts import assert_same_scene, error_at

from sparsa.data.colmap import encode_rows, read_colmap, read_rows, write_colmap
from sparsa.data.colmap_update import check_update, update_colmap
from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
from sparsa.errors import SparsaError
from sparsa.sfm.cameras import project
from sparsa.sfm.filters import keep_observations

EXTRA_KEYPOINTS = 3  # untriangulated keypoints appended to every image


def colmap4_model(root, binary: bool):
    """A COLMAP 4 model as pycolmap writes it (rigs, frames), with untriangulated keypoints and a
    project.ini; returns its directory."""
    scene, _ = synthetic_scene(SyntheticSpec.parse("synthetic:cameras=4,points=40,seed=3,model=PINHOLE"), project)
    write_colmap(scene, root / "ours")
    model = root / "model"
    model.mkdir()
    reconstruction = pycolmap.Reconstruction(str(root / "ours"))
    (reconstruction.write if binary else reconstruction.write_text)(str(model))
    suffix, (cameras, images, points) = read_rows(model)
    rng = np.random.default_rng(0)
    images = [(i, pose, c, name, np.concatenate([xy, rng.uniform(0, 100, (EXTRA_KEYPOINTS, 2))]),
               np.concatenate([ids, np.full(EXTRA_KEYPOINTS, -1)])) for i, pose, c, name, xy, ids in images]
    for name, data in encode_rows(cameras, images, points, binary).items():
        (model / name).write_bytes(data)
    (model / "project.ini").write_text("[General]\nimage_path=images\n")
    return model


def refined(scene):
    """The scene moved a little, with point 0 and one observation of another point dropped."""
    keep = torch.ones(scene.n_observations, dtype=torch.bool)
    keep[scene.obs_point == 0] = False
    keep[int(torch.nonzero(scene.obs_point == 1)[0])] = False
    out, _ = keep_observations(scene, keep)
    return out.replace(translations=out.translations + 0.25, points=out.points * 1.01,
                       intrinsics=out.intrinsics * 1.001)


@pytest.mark.parametrize("binary", [True, False])
def test_update_colmap_rewrites_model_files_and_frames_and_keeps_the_rest(tmp_path, binary):
    model = colmap4_model(tmp_path, binary)
    suffix = ".bin" if binary else ".txt"
    untouched = {name: (model / name).read_bytes() for name in (f"rigs{suffix}", "project.ini")}
    before = read_colmap(model)
    after = refined(before)
    written = update_colmap(after, model)
    assert written == sorted(f"{n}{suffix}" for n in ("cameras", "images", "points3D", "frames"))
    assert sorted(os.listdir(model)) == sorted([*written, *untouched])
    assert {name: (model / name).read_bytes() for name in untouched} == untouched
    assert_same_scene(read_colmap(model), after)

    reconstruction = pycolmap.Reconstruction(str(model))  # poses as COLMAP reads them: from frames
    for row, image_id in enumerate(after.image_ids.tolist()):
        image = reconstruction.images[image_id]
        assert np.array_equal(image.cam_from_world().translation, after.translations[row].numpy())
        dropped = int((before.obs_image == row).sum() - (after.obs_image == row).sum())
        assert image.num_points2D() == int((before.obs_image == row).sum()) + EXTRA_KEYPOINTS
        assert image.num_points3D == int((after.obs_image == row).sum())
        assert dropped >= 0
    assert reconstruction.num_points3D() == after.n_points
    assert np.array_equal(reconstruction.cameras[int(after.camera_ids[0])].params, after.intrinsics[0].numpy())


def test_update_colmap_model_without_frames_rewrites_three_files(tmp_path):
    scene, _ = synthetic_scene(SyntheticSpec.parse("synthetic:cameras=3,points=20,seed=1,model=PINHOLE"), project)
    write_colmap(scene, tmp_path / "m", binary=False)
    before = read_colmap(tmp_path / "m")
    assert update_colmap(refined(before), tmp_path / "m") == ["cameras.txt", "images.txt", "points3D.txt"]
    assert_same_scene(read_colmap(tmp_path / "m"), refined(before))


@pytest.mark.parametrize("binary", [True, False])
def test_check_update_multi_sensor_rig_refuses(tmp_path, binary):
    model = colmap4_model(tmp_path, binary)
    rigs = model / ("rigs.bin" if binary else "rigs.txt")
    if binary:
        rigs.write_bytes(struct.pack("<QII", 1, 1, 2) + struct.pack("<iI", 0, 1) + struct.pack("<iIB", 0, 2, 0))
    else:
        rigs.write_text("# rigs\n1 2 CAMERA 1 CAMERA 2 0\n")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    with pytest.raises(SparsaError, match=error_at(rigs, "rig 1 has 2 sensors")):
        check_update(model)
    with pytest.raises(SparsaError, match="cannot refine this model in place"):
        update_colmap(read_colmap(model), model)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_update_colmap_foreign_ids_refuse_and_write_nothing(tmp_path):
    model = colmap4_model(tmp_path, True)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    scene = read_colmap(model)
    with pytest.raises(SparsaError, match="image ids are not the model's"):
        update_colmap(scene.replace(image_ids=scene.image_ids + 1000), model)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
