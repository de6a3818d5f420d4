"""COLMAP sparse models (``cameras``, ``images``, ``points3D``; ``.bin`` or ``.txt``) to and from a
:class:`Scene`. COLMAP 4's ``rigs``/``frames`` files are ignored and not written: pycolmap 4.2 reads a
model without them as one rig per camera and one frame per image. Binary files are parsed with
struct/numpy (nothing is unpickled); text files have ``#`` comment lines.

Between files and scenes a model is three lists of rows: camera ``(camera_id, model, width, height,
params [n] float64)``; image ``(image_id, pose [7] (qw qx qy qz tx ty tz), camera_id, name, xy [n, 2]
float64, point3D_ids [n] int64 (-1: untriangulated))``; point ``(point3D_id, xyz [3], rgb [3], error,
track [L, 2] int64 (image_id, keypoint index))``.
"""

import os
import struct
from pathlib import Path

import numpy as np
import torch

from sparsa.atomic import COLMAP_MODEL, output_directory
from sparsa.data.rotations import angle_axis_to_quaternion
from sparsa.data.scene import CAMERA_MODELS, Scene
from sparsa.errors import SparsaError

FILES = ("cameras", "images", "points3D")
NO_POINT = -1  # COLMAP's missing point3D id: -1 in text, 2**64 - 1 (the same bits) in binary
UNKNOWN_ERROR = -1.0  # COLMAP's Point3D.error when it was never computed
MODELS = {name: spec for name, spec in CAMERA_MODELS.items() if spec[0] is not None}  # not BAL
MODEL_BY_ID = {spec[0]: name for name, spec in MODELS.items()}
KEYPOINT = np.dtype([("xy", "<f8", (2,)), ("point", "<i8")])  # an images.bin points2D entry
TRACK = np.dtype([("image", "<u4"), ("keypoint", "<u4")])  # a points3D.bin track element
CAMERA_HEAD = struct.Struct("<IiQQ")  # camera_id, model_id, width, height
IMAGE_HEAD = struct.Struct("<I7dI")  # image_id, qw qx qy qz tx ty tz, camera_id
POINT_HEAD = struct.Struct("<q3d3BdQ")  # point3D_id (2**64 - 1 reads as -1), xyz, rgb, error, track_length
COUNT = struct.Struct("<Q")


def read_colmap(path: str | os.PathLike) -> Scene:
    """Read a COLMAP sparse model directory: binary when all three ``.bin`` files exist, else text.

    Observations are the keypoints linked to a 3D point, image by image in file order and, within
    an image, in keypoint order; untriangulated keypoints (point3D id -1) are dropped. Point
    errors and COLMAP 4's rigs/frames are not kept.

    Args:
        path: the directory holding ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``).

    Returns:
        A validated :class:`Scene`: one shared camera model, rotation_format ``quaternion``
        (qw, qx, qy, qz exactly as stored), camera/image/point ids [K]/[I]/[P] int64, image
        names, camera sizes [K, 2] int64 and point colours [P, 3] uint8.

    Raises:
        SparsaError: a missing or malformed file, mixed or unsupported camera models, or tracks
            that disagree with the images' keypoints; the message names the file.
    """
    path = Path(path)
    suffix, rows = read_rows(path)
    return _to_scene([path / f"{name}{suffix}" for name in FILES], *rows).validate(str(path))


def read_rows(path: Path) -> tuple[str, tuple[list, list, list]]:
    """The model's suffix (``.bin`` or ``.txt``) and its camera, image and point rows (see the
    module docstring), every keypoint kept, untriangulated ones included."""
    suffix = model_suffix(path)
    files = [path / f"{name}{suffix}" for name in FILES]
    if suffix == ".bin":
        return suffix, tuple(_Binary(file).records(what, read) for file, what, read in
                             zip(files, ("camera", "image", "point"), (_camera_bin, _image_bin, _point_bin)))
    return suffix, tuple(_text_records(file, *how) for file, how in
                         zip(files, (("camera", _camera_txt, 4), ("image", _image_txt, 10, 9),
                                     ("point", _point_txt, 8))))


def encode_rows(cameras: list[tuple], images: list[tuple], points: list[tuple], binary: bool) -> dict[str, bytes]:
    """File name -> contents of the three model files holding these rows."""
    writers = (_cameras_bin, _images_bin, _points_bin) if binary else (_cameras_txt, _images_txt, _points_txt)
    return {f"{name}{'.bin' if binary else '.txt'}": write(rows)
            for name, write, rows in zip(FILES, writers, (cameras, images, points))}


def write_colmap(scene: Scene, path: str | os.PathLike, *, binary: bool = True, force: bool = False) -> None:
    """Write ``scene`` as a new COLMAP sparse model directory at ``path``, atomically; an existing
    ``path`` is replaced only when sparsa wrote it, or with ``force`` (see :mod:`sparsa.atomic`).

    Each image's keypoints are its observations in obs order and the tracks point back to them,
    so a scene whose observations are grouped by image (as :func:`read_colmap` returns them)
    round-trips bit-exactly. Angle-axis rotations are converted to quaternions. Missing ids become
    1..n, missing names ``image_<id>``, missing sizes twice the principal point, missing colours
    black; point errors are written as -1 (COLMAP's "unknown").

    Args:
        scene: a scene with a COLMAP camera model (not ``BAL``).
        path: the model directory; created, or replaced as a whole.
        binary: write ``.bin`` files (default) or ``.txt`` files.
        force: replace a directory that holds files sparsa did not write.

    Raises:
        SparsaError: the scene is invalid, has BAL cameras, ids COLMAP cannot store, or an image
            name the format cannot hold (empty, NUL, or whitespace in text).
    """
    path = Path(path)
    scene.validate(str(path))
    if scene.model not in MODELS:
        raise SparsaError(f"{path}: COLMAP has no {scene.model} camera model; supported: {', '.join(MODELS)}")
    cameras, images, points = _from_scene(scene)
    for what, rows, limit in (("camera", cameras, 2**32 - 1), ("image", images, 2**32 - 1), ("point", points, 2**63)):
        ids = [row[0] for row in rows]
        if ids and (min(ids) < 0 or max(ids) >= limit or len(set(ids)) < len(ids)):
            raise SparsaError(f"{path}: COLMAP needs unique {what} ids in [0, {limit})")
    bad = [i[3] for i in images if not i[3] or "\0" in i[3] or (not binary and i[3].split() != [i[3]])]
    if bad:
        raise SparsaError(f"{path}: image name {bad[0]!r} cannot be written to a COLMAP "
                          f"{'binary' if binary else 'text'} model")
    with output_directory(path, COLMAP_MODEL, force=force) as (tmp, manifest):
        for name, data in encode_rows(cameras, images, points, binary).items():
            (tmp / name).write_bytes(data)
        manifest.update(images=len(images), points=len(points))


def model_suffix(path: Path) -> str:
    """``.bin`` if all three binary files exist, ``.txt`` if all three text files do."""
    if not path.is_dir():
        raise SparsaError(f"{path}: no such COLMAP model directory")
    missing = {suffix: [f"{name}{suffix}" for name in FILES if not (path / f"{name}{suffix}").is_file()]
               for suffix in (".bin", ".txt")}
    for suffix in (".bin", ".txt"):
        if not missing[suffix]:
            return suffix
    partial = missing[".bin"] if len(missing[".bin"]) < len(FILES) else missing[".txt"]
    raise SparsaError(f"{path}: not a COLMAP model: missing {', '.join(partial)}")


def _to_scene(files: list[Path], cameras: list[tuple], images: list[tuple], points: list[tuple]) -> Scene:
    """Check models, ids, finiteness and links across the three files; build the scene."""
    camera_file, image_file, point_file = files
    model = _shared_model(camera_file, cameras)
    camera_ids, _, widths, heights, params = (list(c) for c in zip(*cameras))
    image_ids, poses, image_cameras, names, xy, linked = (list(c) for c in zip(*images)) if images else [[]] * 6
    point_ids, xyz, rgb, _, tracks = (list(c) for c in zip(*points)) if points else [[]] * 5
    camera_ids, image_ids, image_cameras, point_ids = (np.array(a, dtype=np.int64) for a in
                                                       (camera_ids, image_ids, image_cameras, point_ids))
    counts = np.array([len(k) for k in linked], dtype=np.int64)
    params, poses, xyz = (np.array(a, dtype=np.float64).reshape(-1, n) for a, n in
                          ((params, len(MODELS[model][1])), (poses, 7), (xyz, 3)))
    xy, linked = np.concatenate([np.empty((0, 2)), *xy]), np.concatenate([np.empty(0, np.int64), *linked])
    for file, what, ids, values in ((camera_file, "camera", camera_ids, params), (image_file, "image", image_ids,
                                    np.append(poses, xy)), (point_file, "point", point_ids, xyz)):
        if (repeat := _first_repeat(ids)) is not None:
            raise SparsaError(f"{file}: {what} id {ids[repeat]} appears more than once")
        if not np.isfinite(values).all():
            raise SparsaError(f"{file}: {int((~np.isfinite(values)).sum())} non-finite values")
    image_camera = _rows(camera_ids, image_cameras)
    if (image_camera < 0).any():
        i = int(np.flatnonzero(image_camera < 0)[0])
        raise SparsaError(f"{image_file}: image {image_ids[i]} uses camera {image_cameras[i]}, which "
                          f"{camera_file.name} does not hold")
    keep = np.flatnonzero(linked != NO_POINT)
    _check_links(files, image_ids, counts, linked, keep, point_ids, tracks)
    t = torch.tensor
    return Scene(model=model, intrinsics=t(params), image_camera=t(image_camera), rotations=t(poses[:, :4]),
                 rotation_format="quaternion", translations=t(poses[:, 4:]), points=t(xyz),
                 obs_image=t(np.repeat(np.arange(len(counts)), counts)[keep]),
                 obs_point=t(_rows(point_ids, linked[keep])), obs_xy=t(xy[keep]),
                 camera_sizes=t(np.array([widths, heights], dtype=np.int64).T.copy()), camera_ids=t(camera_ids),
                 image_ids=t(image_ids), point_ids=t(point_ids), image_names=names,
                 point_colors=t(np.array(rgb, dtype=np.uint8).reshape(-1, 3)))


def _shared_model(path: Path, cameras: list[tuple]) -> str:
    """The one camera model of ``cameras``, each with the right number of parameters."""
    if not cameras:
        raise SparsaError(f"{path}: the model has no cameras")
    model = cameras[0][1]
    for camera_id, other, _, _, params in cameras:
        if other != model:
            raise SparsaError(f"{path}: camera {cameras[0][0]} is {model} but camera {camera_id} is {other}; "
                              f"sparsa needs one camera model per scene")
        if len(params) != len(MODELS[model][1]):
            raise SparsaError(f"{path}: camera {camera_id} ({model}) has {len(params)} parameters, "
                              f"expected {len(MODELS[model][1])}")
    return model


def _check_links(files: list[Path], image_ids: np.ndarray, counts: np.ndarray, linked: np.ndarray,
                 keep: np.ndarray, point_ids: np.ndarray, tracks: list) -> None:
    """Each track element names a distinct keypoint linked to its point, and each linked keypoint
    (flat index in ``keep``; ``counts`` [I] keypoints per image) is named by a track."""
    _, image_file, point_file = files
    ends = np.cumsum(counts)
    track = np.concatenate([np.empty((0, 2), np.int64), *tracks])
    owner = np.repeat(point_ids, [len(t) for t in tracks])
    row = _rows(image_ids, track[:, 0])
    valid = (row >= 0) & (track[:, 1] >= 0) & (track[:, 1] < np.append(counts, 0)[row])
    flat = np.where(valid, np.append(ends - counts, 0)[row] + track[:, 1], len(linked))
    wrong = ~valid | (np.append(linked, NO_POINT)[flat] != owner)
    if wrong.any():
        e = int(np.flatnonzero(wrong)[0])
        why = f"links to point {linked[flat[e]]} there" if valid[e] else "does not exist"
        raise SparsaError(f"{point_file}: point {owner[e]}'s track names image {track[e, 0]} keypoint "
                          f"{track[e, 1]}, which {why} in {image_file.name}")
    if (e := _first_repeat(flat)) is not None:
        raise SparsaError(f"{point_file}: point {owner[e]}'s track names image {track[e, 0]} keypoint "
                          f"{track[e, 1]} twice")
    if len(flat) != len(keep):  # a linked keypoint no track names
        k = np.setdiff1d(keep, flat)[0]
        row = int(np.searchsorted(ends, k, side="right"))
        raise SparsaError(f"{image_file}: image {image_ids[row]} keypoint {k - ends[row] + counts[row]} links to "
                          f"point {linked[k]}, but no track in {point_file.name} names it")


def _rows(ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[Q] int64: the row of each query in the unique ``ids`` [N], or -1 where absent."""
    if not len(ids):
        return np.full(len(queries), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], queries), len(ids) - 1)
    return np.where(ids[order][pos] == queries, order[pos], -1)


def _first_repeat(values: np.ndarray) -> int | None:
    """Index of the first element equal to an earlier one, or None."""
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    return int(order[same + 1].min()) if len(same) else None


def _from_scene(scene: Scene) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Camera, image and point rows of a validated scene with a COLMAP camera model."""
    K, I, P, M = scene.n_cameras, scene.n_images, scene.n_points, scene.n_observations
    camera_ids, image_ids, point_ids = (np.arange(1, n + 1, dtype=np.int64) if t is None else t.numpy() for t, n in
                                        ((scene.camera_ids, K), (scene.image_ids, I), (scene.point_ids, P)))
    params = scene.intrinsics.numpy()
    centre = params[:, [MODELS[scene.model][1].index(c) for c in ("cx", "cy")]]
    sizes = (np.maximum(np.rint(2 * centre), 1).astype(np.int64) if scene.camera_sizes is None
             else scene.camera_sizes.numpy())
    rotations = scene.rotations if scene.rotation_format == "quaternion" else angle_axis_to_quaternion(scene.rotations)
    obs_image, obs_point = scene.obs_image.numpy(), scene.obs_point.numpy()
    by_image, by_point = np.argsort(obs_image, kind="stable"), np.argsort(obs_point, kind="stable")
    counts = np.bincount(obs_image, minlength=I)
    keypoint = np.empty(M, dtype=np.int64)
    keypoint[by_image] = np.arange(M) - (np.cumsum(counts) - counts)[obs_image[by_image]]
    per_image = np.cumsum(counts)[:-1]
    track = np.stack([image_ids[obs_image[by_point]], keypoint[by_point]], axis=1)
    colors = np.zeros((P, 3), np.uint8) if scene.point_colors is None else scene.point_colors.numpy()
    names = [f"image_{i}" for i in image_ids.tolist()] if scene.image_names is None else list(scene.image_names)
    cameras = list(zip(camera_ids.tolist(), [scene.model] * K, *sizes.T.tolist(), params))
    images = list(zip(image_ids.tolist(), torch.cat([rotations, scene.translations], 1).tolist(),
                      camera_ids[scene.image_camera.numpy()].tolist(), names,
                      np.split(scene.obs_xy.numpy()[by_image], per_image),
                      np.split(point_ids[obs_point[by_image]], per_image)))
    points = list(zip(point_ids.tolist(), scene.points.tolist(), colors.tolist(), [UNKNOWN_ERROR] * P,
                      np.split(track, np.cumsum(np.bincount(obs_point, minlength=P))[:-1])))
    return cameras, images, points


# ---- binary files -------------------------------------------------------------------------------
class _Binary:
    """A cursor over a binary file; reading past its end raises a :class:`SparsaError` naming it."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def _take(self, n: int, what: str) -> int:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.data):
            raise SparsaError(f"{self.path}: truncated: {what} needs {n} bytes at offset {start}, "
                              f"the file has {len(self.data)}")
        return start

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack_from(self.data, self._take(fmt.size, what))

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.data, dtype, count, self._take(count * dtype.itemsize, what))

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise SparsaError(f"{self.path}: truncated: {what} has no terminating NUL")
        return self.data[self._take(end + 1 - self.pos, what):end].decode("utf-8", errors="surrogateescape")

    def records(self, what: str, read) -> list[tuple]:
        """``read(self, i)`` for each of the file's records, checking that nothing follows the last."""
        rows = [read(self, i) for i in range(self.unpack(COUNT, f"the {what} count")[0])]
        if self.pos != len(self.data):
            raise SparsaError(f"{self.path}: {len(self.data) - self.pos} unexpected bytes after the last {what}")
        return rows


def _camera_bin(f: _Binary, i: int) -> tuple:
    camera_id, model_id, width, height = f.unpack(CAMERA_HEAD, f"camera {i}")
    if model_id not in MODEL_BY_ID:
        raise SparsaError(f"{f.path}: camera {camera_id} uses COLMAP model id {model_id}, which sparsa "
                          f"does not read; supported: {', '.join(MODELS)}")
    model = MODEL_BY_ID[model_id]
    return camera_id, model, width, height, f.array(np.dtype("<f8"), len(MODELS[model][1]), f"camera {camera_id}")


def _image_bin(f: _Binary, i: int) -> tuple:
    image_id, *pose, camera_id = f.unpack(IMAGE_HEAD, f"image {i}")
    name = f.name(f"image {image_id}'s name")
    keypoints = f.array(KEYPOINT, f.unpack(COUNT, f"image {image_id}")[0], f"image {image_id}'s keypoints")
    return image_id, pose, camera_id, name, keypoints["xy"], keypoints["point"]


def _point_bin(f: _Binary, i: int) -> tuple:
    point_id, *xyz, r, g, b, error, length = f.unpack(POINT_HEAD, f"point {i}")
    track = f.array(TRACK, length, f"point {point_id}'s track")
    return point_id, xyz, (r, g, b), error, np.stack([track["image"], track["keypoint"]], 1).astype(np.int64)


def _cameras_bin(cameras: list[tuple]) -> bytes:
    return COUNT.pack(len(cameras)) + b"".join(
        CAMERA_HEAD.pack(camera_id, MODELS[model][0], width, height) + params.astype("<f8").tobytes()
        for camera_id, model, width, height, params in cameras)


def _images_bin(images: list[tuple]) -> bytes:
    parts = [COUNT.pack(len(images))]
    for image_id, pose, camera_id, name, xy, point_ids in images:
        keypoints = np.empty(len(xy), KEYPOINT)
        keypoints["xy"], keypoints["point"] = xy, point_ids
        parts += [IMAGE_HEAD.pack(image_id, *pose, camera_id), name.encode("utf-8", errors="surrogateescape"),
                  b"\0", COUNT.pack(len(xy)), keypoints.tobytes()]
    return b"".join(parts)


def _points_bin(points: list[tuple]) -> bytes:
    return COUNT.pack(len(points)) + b"".join(
        POINT_HEAD.pack(point_id, *xyz, *rgb, error, len(track)) + track.astype("<u4").tobytes()
        for point_id, xyz, rgb, error, track in points)


# ---- text files ---------------------------------------------------------------------------------
def _text_records(path: Path, what: str, read, min_tokens: int, max_split: int = -1) -> list[tuple]:
    """``read(path, line_no, tokens, lines)`` for each data line of ``path`` (``#`` comments and blank
    lines skipped), with ``lines`` the iterator over the (number, line) pairs that follow."""
    try:
        lines = iter(enumerate(path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(), 1))
    except OSError as e:
        raise SparsaError(f"{path}: cannot read ({e.strerror or e})") from None
    rows = []
    for line_no, line in lines:
        tokens = line.split(None, max_split)
        if tokens and not tokens[0].startswith("#"):
            if len(tokens) < min_tokens:
                raise SparsaError(f"{path}: line {line_no}: a {what} needs {min_tokens} values, got {len(tokens)}")
            rows.append(read(path, line_no, tokens, lines))
    return rows


def _numbers(path: Path, line_no: int, tokens, dtype) -> np.ndarray:
    """``tokens`` as an array of ``dtype``; a bad token raises a SparsaError naming the line."""
    try:
        return np.array(tokens, dtype=dtype)
    except (ValueError, OverflowError) as e:
        raise SparsaError(f"{path}: line {line_no}: {e}") from None


def _camera_txt(path: Path, line_no: int, tokens: list[str], _) -> tuple:
    if tokens[1] not in MODELS:
        raise SparsaError(f"{path}: camera {tokens[0]} uses the {tokens[1]} model, which sparsa does not read; "
                          f"supported: {', '.join(MODELS)}")
    camera_id, width, height = _numbers(path, line_no, [tokens[0], *tokens[2:4]], np.int64).tolist()
    return camera_id, tokens[1], width, height, _numbers(path, line_no, tokens[4:], np.float64)


def _image_txt(path: Path, line_no: int, tokens: list[str], lines) -> tuple:
    image_id, camera_id = _numbers(path, line_no, [tokens[0], tokens[8]], np.int64).tolist()
    pose = _numbers(path, line_no, tokens[1:8], np.float64)
    line_no, line = next(lines, (line_no + 1, ""))  # the keypoint line follows, even when empty
    values = line.split()
    if len(values) % 3:
        raise SparsaError(f"{path}: line {line_no}: {len(values)} values, not (X, Y, POINT3D_ID) triples")
    table = np.array(values, dtype=str).reshape(-1, 3)
    return (image_id, pose, camera_id, tokens[9].strip(), _numbers(path, line_no, table[:, :2], np.float64),
            _numbers(path, line_no, table[:, 2], np.int64))


def _point_txt(path: Path, line_no: int, tokens: list[str], _) -> tuple:
    if len(tokens) % 2:
        raise SparsaError(f"{path}: line {line_no}: the track is not (IMAGE_ID, POINT2D_IDX) pairs")
    rgb = _numbers(path, line_no, tokens[4:7], np.int64)
    if not ((rgb >= 0) & (rgb <= 255)).all():
        raise SparsaError(f"{path}: line {line_no}: colour {rgb.tolist()} is outside 0..255")
    values = _numbers(path, line_no, tokens[1:4] + tokens[7:8], np.float64)
    return (int(_numbers(path, line_no, tokens[0], np.int64)), values[:3], rgb, values[3],
            _numbers(path, line_no, tokens[8:], np.int64).reshape(-1, 2))


def _text(header: str, lines) -> bytes:
    return "\n".join([header, *lines, ""]).encode("utf-8", errors="surrogateescape")


def _cameras_txt(cameras: list[tuple]) -> bytes:
    return _text(f"# {len(cameras)} cameras: CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]",
                 (" ".join([str(camera_id), model, str(width), str(height), *map(repr, params.tolist())])
                  for camera_id, model, width, height, params in cameras))


def _images_txt(images: list[tuple]) -> bytes:
    lines = []
    for image_id, pose, camera_id, name, xy, point_ids in images:
        lines.append(" ".join([str(image_id), *(repr(float(v)) for v in pose), str(camera_id), name]))
        lines.append(" ".join(f"{x!r} {y!r} {p}" for (x, y), p in zip(xy.tolist(), point_ids.tolist())))
    return _text(f"# {len(images)} images, two lines each: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                 f"then POINTS2D[] as (X Y POINT3D_ID)", lines)


def _points_txt(points: list[tuple]) -> bytes:
    return _text(f"# {len(points)} points: POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID POINT2D_IDX)",
                 (" ".join([str(point_id), *(repr(float(v)) for v in xyz), *(str(int(v)) for v in rgb),
                            repr(float(error)),
                            *map(str, track.ravel().tolist())]) for point_id, xyz, rgb, error, track in points))
