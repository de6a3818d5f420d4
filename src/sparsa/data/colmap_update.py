"""Refining a COLMAP model in place: write a solver's values back into the directory it was read
from, and keep everything else there.

Only ``cameras``, ``images`` and ``points3D`` (in the format already there) and, for COLMAP 4
models, the poses in ``frames`` are rewritten. Untriangulated keypoints, image names, point
colours and every other file (``rigs``, ``project.ini``, ...) stay as they were; observations the
solver dropped become untriangulated keypoints, and points it dropped leave ``points3D``, as
COLMAP's own filters do. COLMAP 4 reads image poses from ``frames`` when that file exists, so its
poses are rewritten too; rigs of more than one sensor are refused (sparsa poses each image alone).
"""

import struct
from pathlib import Path

import numpy as np
import torch

from sparsa.atomic import replace_files
from sparsa.data.colmap import NO_POINT, UNKNOWN_ERROR, encode_rows, model_suffix, read_rows
from sparsa.data.rotations import angle_axis_to_quaternion
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError

COUNT = struct.Struct("<Q")
RIG_HEAD = struct.Struct("<II")  # rig_id, num_sensors
FRAME_HEAD = struct.Struct("<II7dI")  # frame_id, rig_id, qw qx qy qz tx ty tz, num_data_ids
DATA_ID = struct.Struct("<iIQ")  # sensor type (0: camera), sensor id, data id (the image id)
CAMERA_SENSOR = 0


def check_update(path) -> str:
    """Check, before any compute, that the COLMAP model in ``path`` can be refined in place: its
    three files exist and no rig or frame ties several images. Returns its suffix (``.bin``/``.txt``)."""
    path = Path(path)
    suffix = model_suffix(path)
    _check_rigs(path / f"rigs{suffix}", suffix == ".bin")
    frames = path / f"frames{suffix}"
    if frames.is_file():
        (_frames_bin if suffix == ".bin" else _frames_txt)(frames, {})
    return suffix


def update_colmap(scene: Scene, path) -> list[str]:
    """Write ``scene``'s intrinsics, poses, points and kept observations into the COLMAP model it
    was read from, in place.

    Args:
        scene: the refined scene, with the camera, image and point ids of the model (a subset of
            its points and observations: those the solver kept).
        path: the model directory.

    Returns:
        The names of the files rewritten.

    Raises:
        SparsaError: the scene's ids are not the model's, or the model has multi-sensor rigs;
            nothing is written then.
    """
    path = Path(path)
    suffix, (cameras, images, points) = read_rows(path)
    binary = suffix == ".bin"
    poses, params, xyz, kept = _refined(scene, path, {c[0] for c in cameras}, {i[0] for i in images},
                                        {p[0] for p in points})
    cameras = [(cid, model, w, h, params.get(cid, old)) for cid, model, w, h, old in cameras]
    images = [_relinked(row, poses, kept) for row in images]
    linked = {row[0]: row[5] for row in images}
    points = [(pid, xyz[pid], rgb, UNKNOWN_ERROR, track[[linked[i][k] == pid for i, k in track.tolist()]])
              for pid, _, rgb, _, track in points if pid in xyz]
    contents = encode_rows(cameras, images, points, binary)
    check_update(path)
    frames = path / f"frames{suffix}"
    if frames.is_file():
        contents[frames.name] = (_frames_bin if binary else _frames_txt)(frames, poses)
    replace_files(path, contents)
    return sorted(contents)


def _refined(scene: Scene, path: Path, camera_ids: set, image_ids: set, point_ids: set):
    """Per id: image poses [7], camera params, point positions; and the kept observations as a set
    of (image id, point id, x, y)."""
    for what, ids, known in (("camera", scene.camera_ids, camera_ids), ("image", scene.image_ids, image_ids),
                             ("point", scene.point_ids, point_ids)):
        if ids is None or not set(ids.tolist()) <= known:
            raise SparsaError(f"{path}: the refined scene's {what} ids are not the model's; write it to "
                              "another -o")
    quaternions = (scene.rotations if scene.rotation_format == "quaternion"
                   else angle_axis_to_quaternion(scene.rotations))
    poses = dict(zip(scene.image_ids.tolist(), torch.cat([quaternions, scene.translations], 1).tolist()))
    params = dict(zip(scene.camera_ids.tolist(), scene.intrinsics.numpy()))
    xyz = dict(zip(scene.point_ids.tolist(), scene.points.tolist()))
    kept = set(zip(scene.image_ids[scene.obs_image].tolist(), scene.point_ids[scene.obs_point].tolist(),
                   *scene.obs_xy.T.tolist()))
    return poses, params, xyz, kept


def _relinked(image: tuple, poses: dict, kept: set) -> tuple:
    """An image row with its refined pose, and each keypoint whose observation was dropped unlinked."""
    image_id, pose, camera_id, name, xy, point_ids = image
    point_ids = point_ids.copy()
    for k in np.flatnonzero(point_ids != NO_POINT).tolist():
        if (image_id, int(point_ids[k]), float(xy[k, 0]), float(xy[k, 1])) not in kept:
            point_ids[k] = NO_POINT
    return image_id, poses.get(image_id, pose), camera_id, name, xy, point_ids


def _check_rigs(rigs: Path, binary: bool) -> None:
    """Refuse a model with a rig of more than one sensor (its images' poses are tied)."""
    if not rigs.is_file():
        return
    if binary:
        data = rigs.read_bytes()
        pos = COUNT.size
        for _ in range(COUNT.unpack_from(data)[0] if len(data) >= COUNT.size else 0):
            if pos + RIG_HEAD.size > len(data):
                raise SparsaError(f"{rigs}: truncated")
            rig_id, sensors = RIG_HEAD.unpack_from(data, pos)
            if sensors > 1:
                _multi_sensor(rigs, rig_id, sensors)
            pos += RIG_HEAD.size + 8 * sensors  # the reference sensor: type, id
        return
    for line in _data_lines(rigs):
        if len(line) > 1 and line[1].isdigit() and int(line[1]) > 1:
            _multi_sensor(rigs, line[0], int(line[1]))


def _multi_sensor(rigs: Path, rig_id, sensors: int):
    raise SparsaError(f"{rigs}: rig {rig_id} has {sensors} sensors; sparsa poses each image alone, so it "
                      "cannot refine this model in place: write to another -o")


def _frames_bin(frames: Path, poses: dict) -> bytes:
    """frames.bin with each single-image frame's rig_from_world set to its image's pose."""
    data = bytearray(frames.read_bytes())
    pos = COUNT.size
    for _ in range(COUNT.unpack_from(data)[0] if len(data) >= COUNT.size else 0):
        if pos + FRAME_HEAD.size > len(data):
            raise SparsaError(f"{frames}: truncated")
        frame_id, rig_id, *pose, n = FRAME_HEAD.unpack_from(data, pos)
        ids = [DATA_ID.unpack_from(data, pos + FRAME_HEAD.size + DATA_ID.size * j) for j in range(n)]
        image = _frame_image(frames, frame_id, [(t, d) for t, _, d in ids])
        if image in poses:
            FRAME_HEAD.pack_into(data, pos, frame_id, rig_id, *poses[image], n)
        pos += FRAME_HEAD.size + DATA_ID.size * n
    return bytes(data)


def _frames_txt(frames: Path, poses: dict) -> bytes:
    """frames.txt with each single-image frame's RIG_FROM_WORLD set to its image's pose."""
    out = []
    for raw in frames.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        tokens = raw.split()
        if tokens and not tokens[0].startswith("#") and len(tokens) >= 10:
            data = [(0 if t == "CAMERA" else -1, int(d)) for t, _, d in zip(*[iter(tokens[10:])] * 3)]
            image = _frame_image(frames, tokens[0], data)
            if image in poses:
                raw = " ".join([*tokens[:2], *map(repr, poses[image]), *tokens[9:]])
        out.append(raw)
    return ("\n".join(out) + "\n").encode("utf-8", errors="surrogateescape")


def _frame_image(frames: Path, frame_id, data: list[tuple[int, int]]) -> int | None:
    """The image id of a frame holding one camera image; refuse a frame of several images."""
    cameras = [d for t, d in data if t == CAMERA_SENSOR]
    if len(cameras) > 1:
        raise SparsaError(f"{frames}: frame {frame_id} holds {len(cameras)} images of a rig; sparsa poses each "
                          "image alone, so it cannot refine this model in place: write to another -o")
    return cameras[0] if cameras else None


def _data_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
