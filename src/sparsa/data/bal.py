"""Bundle Adjustment in the Large (BAL) problem files: read into and write from a :class:`Scene`.

A BAL file is whitespace-separated text, plain or bzip2-compressed (chosen by a ``.bz2`` suffix):

* a header ``num_cameras num_points num_observations``;
* one ``camera_index point_index x y`` line per observation (0-based indices, pixels relative to
  the image centre);
* 9 numbers per camera: Rodrigues angle-axis (3), translation (3), ``f``, ``k1``, ``k2``;
* 3 numbers per point (world coordinates).

Each BAL camera is also its image, so a BAL scene has ``image_camera == arange(K)``.
"""

import bz2
import os
from pathlib import Path

import numpy as np
import torch

from sparsa.atomic import write_file
from sparsa.data.scene import Scene
from sparsa.errors import SparsaError

CAMERA_VALUES = 9  # angle-axis 3, translation 3, f, k1, k2
MAX_EXACT_INDEX = 2**53  # float64 holds every integer below this exactly


def read_bal(path: str | os.PathLike) -> Scene:
    """Read a BAL problem file (``.txt`` or ``.bz2``).

    Args:
        path: the file; a ``.bz2`` suffix means bzip2-compressed.

    Returns:
        A validated :class:`Scene` with model ``BAL``, rotation_format ``angle_axis``,
        ``K == I == num_cameras``, ``image_camera = arange(K)``, intrinsics [K, 3] float64
        (f, k1, k2), and no ids, names, sizes or colours.

    Raises:
        SparsaError: the file is missing or malformed (wrong number of values, a non-numeric
            token, an index out of range, a non-finite value); the message names the file.
    """
    values = _parse_numbers(path, _read_text(path))
    n_cameras, n_points, n_obs = _header(path, values)
    obs = values[3:3 + 4 * n_obs].reshape(n_obs, 4)
    cameras = values[3 + 4 * n_obs:3 + 4 * n_obs + CAMERA_VALUES * n_cameras].reshape(n_cameras, CAMERA_VALUES)
    points = values[3 + 4 * n_obs + CAMERA_VALUES * n_cameras:].reshape(n_points, 3)
    cam_idx = _indices(path, obs[:, 0], n_cameras, "camera", "cameras")
    point_idx = _indices(path, obs[:, 1], n_points, "point", "points")
    for what, array in (("observation", obs[:, 2:]), ("camera", cameras), ("point", points)):
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise SparsaError(f"{path}: {what} {row} holds a non-finite value ({array[row].tolist()})")
    cameras_t = torch.from_numpy(cameras.copy())
    scene = Scene(
        model="BAL",
        intrinsics=cameras_t[:, 6:].contiguous(),
        image_camera=torch.arange(n_cameras, dtype=torch.int64),
        rotations=cameras_t[:, :3].contiguous(),
        rotation_format="angle_axis",
        translations=cameras_t[:, 3:6].contiguous(),
        points=torch.from_numpy(points.copy()),
        obs_image=torch.from_numpy(cam_idx),
        obs_point=torch.from_numpy(point_idx),
        obs_xy=torch.from_numpy(obs[:, 2:].copy()),
    )
    return scene.validate(str(path))


def write_bal(scene: Scene, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write ``scene`` as a BAL problem file, atomically (nothing is left half-written on error);
    an existing file is replaced only with ``force``.

    Floats are written as Python's shortest round-trip ``repr``, so ``read_bal(write_bal(s))``
    gives back bit-identical tensors. A ``.bz2`` suffix writes bzip2-compressed text.

    Args:
        scene: a BAL scene: model ``BAL``, rotation_format ``angle_axis`` and one camera per
            image (``image_camera == arange(K)``, ``K == I``).
        path: the destination file; missing parent directories are created.
        force: replace an existing file.

    Raises:
        SparsaError: the scene is not a BAL scene or fails :meth:`Scene.validate`.
    """
    scene.validate(str(path))
    if scene.model != "BAL":
        raise SparsaError(f"{path}: BAL files hold BAL cameras (f, k1, k2), not {scene.model}")
    if scene.rotation_format != "angle_axis":
        raise SparsaError(f"{path}: BAL files hold angle-axis rotations, not {scene.rotation_format}")
    if scene.n_images != scene.n_cameras or not torch.equal(
            scene.image_camera, torch.arange(scene.n_cameras, dtype=torch.int64)):
        raise SparsaError(f"{path}: BAL files have one camera per image, but the scene's image_camera "
                          f"is not arange({scene.n_images})")
    text = _format(scene)
    data = bz2.compress(text.encode()) if Path(path).suffix == ".bz2" else text.encode()
    write_file(path, data, force=force)


def _read_text(path) -> bytes:
    """The file's bytes, decompressed when the suffix is ``.bz2``."""
    try:
        if Path(path).suffix == ".bz2":
            with bz2.open(path, "rb") as f:
                return f.read()
        return Path(path).read_bytes()
    except OSError as e:  # missing file, unreadable, corrupt bzip2 stream
        raise SparsaError(f"{path}: cannot read BAL file ({e.strerror or e})") from None
    except EOFError:
        raise SparsaError(f"{path}: the bzip2 stream ends early (truncated file)") from None


def _parse_numbers(path, data: bytes) -> np.ndarray:
    """Every whitespace-separated token of ``data`` as float64 [N]; a non-number names its line."""
    try:
        return np.array(data.split(), dtype=np.float64)
    except ValueError as e:
        for line_no, line in enumerate(data.splitlines(), 1):
            for token in line.split():
                if not _is_number(token):
                    text = token.decode(errors="replace")
                    raise SparsaError(f"{path}: line {line_no}: {text!r} is not a number") from None
        raise SparsaError(f"{path}: {e}") from None


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _header(path, values: np.ndarray) -> tuple[int, int, int]:
    """(num_cameras, num_points, num_observations), checked against the number of values."""
    if values.size < 3:
        raise SparsaError(f"{path}: the header needs 3 numbers (cameras, points, observations), "
                          f"the file holds {values.size}")
    head = values[:3]
    if not (np.isfinite(head).all() and (head >= 0).all() and (head == np.floor(head)).all()
            and (head < MAX_EXACT_INDEX).all()):
        raise SparsaError(f"{path}: the header {head.tolist()} is not three non-negative integers")
    n_cameras, n_points, n_obs = (int(v) for v in head)
    expected = 3 + 4 * n_obs + CAMERA_VALUES * n_cameras + 3 * n_points
    if values.size != expected:
        raise SparsaError(f"{path}: the header declares {n_cameras} cameras, {n_points} points and "
                          f"{n_obs} observations ({expected} values), but the file holds {values.size}")
    return n_cameras, n_points, n_obs


def _indices(path, column: np.ndarray, n: int, what: str, plural: str) -> np.ndarray:
    """A float64 index column as int64 [M], each an integer in ``[0, n)``."""
    bad = ~((column >= 0) & (column < n) & (column == np.floor(column)))  # NaN compares False
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = float(column[i])
        shown = int(value) if value.is_integer() else value  # NaN and inf are not integers
        raise SparsaError(f"{path}: observation {i} has {what} index {shown}, but the header "
                          f"declares {n} {plural}")
    return column.astype(np.int64)


def _format(scene: Scene) -> str:
    """The BAL text of a checked BAL scene."""
    K, P, M = scene.n_cameras, scene.n_points, scene.n_observations
    xy = scene.obs_xy.tolist()
    lines = [f"{K} {P} {M}"]
    lines += [f"{c} {p} {x!r} {y!r}" for c, p, (x, y) in
              zip(scene.obs_image.tolist(), scene.obs_point.tolist(), xy)]
    cameras = torch.cat([scene.rotations, scene.translations, scene.intrinsics], dim=1)
    lines += map(repr, cameras.flatten().tolist())
    lines += map(repr, scene.points.flatten().tolist())
    return "\n".join(lines) + "\n"
