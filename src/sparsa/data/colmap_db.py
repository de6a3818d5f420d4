"""COLMAP feature databases (``database.db``, SQLite) read with the standard library's ``sqlite3``.

What a global mapper needs from one: cameras, images, keypoints and two-view geometries (the
pairs' verified inlier matches with their configuration, F, E and, when stored, the relative
pose ``cam2_from_cam1``). Columns are selected by name, so databases of other COLMAP versions with
extra columns read the same; a missing table or column, a blob of the wrong size or a match index
outside its image's keypoints is one :class:`SparsaError` naming the table and row.

COLMAP's conventions: ``pair_id = 2147483647 * id1 + id2`` with ``id1 < id2``; match column 0
indexes image ``id1``'s keypoints; keypoints are float32 rows whose first two columns are the
pixel x, y; matrices are float64, row-major; ``x2ᵀ F x1 = 0`` in pixels, ``x2ᵀ E x1 = 0`` in
normalized coordinates; ``qvec`` (w, x, y, z) and ``tvec`` give ``cam2_from_cam1``.
"""

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsa.data.scene import CAMERA_MODELS
from sparsa.errors import SparsaError

MAX_IMAGE_ID = 2147483647  # COLMAP's kMaxNumImages: the pair id's base
MODEL_BY_ID = {spec[0]: name for name, spec in CAMERA_MODELS.items() if spec[0] is not None}
# TwoViewGeometry::ConfigurationType
CONFIGS = {0: "UNDEFINED", 1: "DEGENERATE", 2: "CALIBRATED", 3: "UNCALIBRATED", 4: "PLANAR", 5: "PANORAMIC",
           6: "PLANAR_OR_PANORAMIC", 7: "WATERMARK", 8: "MULTIPLE"}
COLUMNS = {
    "cameras": ("camera_id", "model", "width", "height", "params"),
    "images": ("image_id", "name", "camera_id"),
    "keypoints": ("image_id", "rows", "cols", "data"),
    "two_view_geometries": ("pair_id", "rows", "cols", "data", "config", "F", "E", "H"),
}
POSE_COLUMNS = ("qvec", "tvec")  # optional: absent in older databases


@dataclass
class ViewDatabase:
    """A COLMAP database's content as arrays; images and cameras in id order.

    Args:
        path: the file read.
        model: the camera model every camera uses (a key of :data:`CAMERA_MODELS`).
        intrinsics: [K, n_params] float64; camera_ids [K] int64; camera_sizes [K, 2] int64 (width, height).
        image_ids: [I] int64; image_names: I strings; image_camera: [I] int64 row of ``intrinsics``.
        keypoints: I arrays [n_i, 2] float64, pixel x, y.
        pairs: [E, 2] int64 image rows (i, j), ``image_ids[i] < image_ids[j]``.
        config: [E] int64 (:data:`CONFIGS`).
        F, E: [E, 3, 3] float64, NaN where the database stores none.
        pose: [E, 7] float64 (qw, qx, qy, qz, tx, ty, tz) of ``cam_j_from_cam_i``, NaN where none.
        matches: E arrays [m_e, 2] int64, keypoint indices in image i and image j.
    """

    path: str
    model: str
    intrinsics: torch.Tensor
    camera_ids: torch.Tensor
    camera_sizes: torch.Tensor
    image_ids: torch.Tensor
    image_names: list[str]
    image_camera: torch.Tensor
    keypoints: list[np.ndarray]
    pairs: torch.Tensor
    config: torch.Tensor
    F: torch.Tensor
    E: torch.Tensor
    pose: torch.Tensor
    matches: list[np.ndarray]

    @property
    def n_images(self) -> int:
        return len(self.image_names)

    @property
    def n_pairs(self) -> int:
        return self.pairs.shape[0]


def read_database(path: str | os.PathLike) -> ViewDatabase:
    """Read and validate a COLMAP database (opened read-only; nothing is written to it).

    Raises:
        SparsaError: not an SQLite file, a missing table or column, mixed or unknown camera models,
            a blob of the wrong size, a pair naming an unknown image, a match outside its image's
            keypoints, or no images at all; the message names the file, table and row.
    """
    path = Path(path)
    if not path.is_file():
        raise SparsaError(f"{path}: no such database file")
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            return _read(con, str(path))
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise SparsaError(f"{path}: not a readable COLMAP database ({e})") from None


def _read(con: sqlite3.Connection, path: str) -> ViewDatabase:
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    columns = {}
    for table, needed in COLUMNS.items():
        if table not in tables:
            raise SparsaError(f"{path}: table {table} missing; not a COLMAP database")
        columns[table] = [row[1] for row in con.execute(f"PRAGMA table_info({table})")]
        absent = [c for c in needed if c not in columns[table]]
        if absent:
            raise SparsaError(f"{path}: table {table} lacks column(s) {', '.join(absent)}")
    cameras = con.execute("SELECT camera_id, model, width, height, params FROM cameras ORDER BY camera_id").fetchall()
    images = con.execute("SELECT image_id, name, camera_id FROM images ORDER BY image_id").fetchall()
    if not images:
        raise SparsaError(f"{path}: the database holds no images")
    model, intrinsics = _cameras(path, cameras)
    camera_row = {row[0]: k for k, row in enumerate(cameras)}
    image_row = {row[0]: i for i, row in enumerate(images)}
    for image_id, name, camera_id in images:
        if camera_id not in camera_row:
            raise SparsaError(f"{path}: images row image_id={image_id}: camera_id {camera_id} not in table cameras")
    keypoints = _keypoints(con, path, image_row)
    pose_cols = all(c in columns["two_view_geometries"] for c in POSE_COLUMNS)
    pairs, config, F, E, pose, matches = [], [], [], [], [], []
    query = "SELECT pair_id, rows, cols, data, config, F, E, H" + (", qvec, tvec" if pose_cols else "")
    for row in con.execute(query + " FROM two_view_geometries ORDER BY pair_id"):
        pair_id, rows, cols, data, cfg = row[:5]
        id1, id2 = divmod(pair_id, MAX_IMAGE_ID)
        where = f"{path}: two_view_geometries row pair_id={pair_id}"
        if id1 not in image_row or id2 not in image_row:
            raise SparsaError(f"{where}: image {id1 if id1 not in image_row else id2} not in table images")
        i, j = image_row[id1], image_row[id2]
        m = _blob(where, "data", data, (rows, cols), np.uint32) if rows else np.zeros((0, 2), np.uint32)
        if m.shape[1] != 2:
            raise SparsaError(f"{where}: data has {cols} columns; matches have 2")
        for side, image in ((0, i), (1, j)):
            if len(m) and int(m[:, side].max()) >= len(keypoints[image]):
                raise SparsaError(f"{where}: keypoint index {int(m[:, side].max())} outside image "
                                  f"{int(images[image][0])}'s {len(keypoints[image])} keypoints")
        pairs.append((i, j))
        config.append(int(cfg))
        F.append(_matrix(where, "F", row[5]))
        E.append(_matrix(where, "E", row[6]))
        pose.append(_pose(where, row[8], row[9]) if pose_cols else np.full(7, np.nan))
        matches.append(m.astype(np.int64))
    n = len(pairs)
    return ViewDatabase(
        path=path, model=model, intrinsics=torch.from_numpy(intrinsics),
        camera_ids=torch.tensor([r[0] for r in cameras], dtype=torch.int64),
        camera_sizes=torch.tensor([[r[2], r[3]] for r in cameras], dtype=torch.int64).view(-1, 2),
        image_ids=torch.tensor([r[0] for r in images], dtype=torch.int64), image_names=[r[1] for r in images],
        image_camera=torch.tensor([camera_row[r[2]] for r in images], dtype=torch.int64),
        keypoints=keypoints, pairs=torch.tensor(pairs, dtype=torch.int64).view(n, 2),
        config=torch.tensor(config, dtype=torch.int64),
        F=torch.from_numpy(np.stack(F) if n else np.zeros((0, 3, 3))),
        E=torch.from_numpy(np.stack(E) if n else np.zeros((0, 3, 3))),
        pose=torch.from_numpy(np.stack(pose) if n else np.zeros((0, 7))), matches=matches)


def _cameras(path: str, cameras: list[tuple]) -> tuple[str, np.ndarray]:
    """(the shared model name, [K, n_params] float64)."""
    if not cameras:
        raise SparsaError(f"{path}: table cameras is empty")
    models = set()
    params = []
    for camera_id, model_id, width, height, blob in cameras:
        where = f"{path}: cameras row camera_id={camera_id}"
        if model_id not in MODEL_BY_ID:
            raise SparsaError(f"{where}: camera model id {model_id} unsupported; supported: "
                              + ", ".join(f"{k} ({v})" for k, v in MODEL_BY_ID.items()))
        name = MODEL_BY_ID[model_id]
        models.add(name)
        p = _blob(where, "params", blob, (len(CAMERA_MODELS[name][1]),), np.float64)
        if not np.isfinite(p).all():
            raise SparsaError(f"{where}: params are not finite")
        params.append(p)
    if len(models) > 1:
        raise SparsaError(f"{path}: cameras mix models {', '.join(sorted(models))}; sparsa sfm needs one model")
    return models.pop(), np.stack(params).astype(np.float64)


def _keypoints(con: sqlite3.Connection, path: str, image_row: dict[int, int]) -> list[np.ndarray]:
    keypoints = [np.zeros((0, 2)) for _ in image_row]
    for image_id, rows, cols, data in con.execute("SELECT image_id, rows, cols, data FROM keypoints"):
        where = f"{path}: keypoints row image_id={image_id}"
        if image_id not in image_row:
            raise SparsaError(f"{where}: image not in table images")
        if rows and cols < 2:
            raise SparsaError(f"{where}: {cols} columns; keypoints need x, y")
        xy = _blob(where, "data", data, (rows, cols), np.float32)[:, :2] if rows else np.zeros((0, 2))
        if not np.isfinite(xy).all():
            raise SparsaError(f"{where}: keypoints are not finite")
        keypoints[image_row[image_id]] = xy.astype(np.float64)
    return keypoints


def _blob(where: str, column: str, blob, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``blob`` as an array of ``shape``; an error naming ``column`` when its size differs."""
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if blob is None or len(blob) != need or min(shape) < 0:
        have = "no data" if blob is None else f"{len(blob)} bytes"
        raise SparsaError(f"{where}: {column} holds {have}; {' x '.join(map(str, shape))} "
                          f"{np.dtype(dtype).name} needs {need}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _matrix(where: str, column: str, blob) -> np.ndarray:
    """A stored 3x3 float64 matrix, or NaNs when the column is empty."""
    if blob is None or len(blob) == 0:
        return np.full((3, 3), np.nan)
    return _blob(where, column, blob, (3, 3), np.float64).copy()


def _pose(where: str, qvec, tvec) -> np.ndarray:
    """(qw, qx, qy, qz, tx, ty, tz), NaNs when not stored (empty, or the identity placeholder of a
    database written without relative poses)."""
    if not qvec or not tvec:
        return np.full(7, np.nan)
    pose = np.concatenate([_blob(where, "qvec", qvec, (4,), np.float64), _blob(where, "tvec", tvec, (3,), np.float64)])
    if not np.isfinite(pose).all() or not np.any(pose[4:]):
        return np.full(7, np.nan)
    return pose
