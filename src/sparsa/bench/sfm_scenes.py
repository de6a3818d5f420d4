"""Feature databases for ``sparsa bench sfm``: a seeded synthetic scene with realistic track lengths,
written as a COLMAP database whose two-view geometries COLMAP itself estimated, and its ground truth.

``pycolmap.synthesize_dataset`` makes every point visible in every image (each pair then matches
every point: at 200 images that is millions of matches per image and it aborts), so it only lays
out the database here: one camera, and one rig, frame and image per view. The scene is our own:

* **Layout.** Images on a ring of radius ``N / 2π`` (one unit apart), looking outward with a few
  degrees of jitter, at points on a surrounding wall ``wall_distance`` units away (with depth
  relief). A point is seen only by images whose frustum it falls in, so a track spans about ten
  neighbouring views whatever N is, and the ring closes a loop.
* **Keypoints.** Each image's projections with ``pixel_noise`` px of Gaussian noise, plus
  ``clutter`` random keypoints that match nothing, in shuffled order.
* **Matches.** Every pair sharing ``min_shared`` or more points gets those inlier matches plus
  random outlier matches so that inliers are ``inlier_ratio`` of them.
* **Two-view geometries.** ``pycolmap.verify_matches`` (COLMAP's RANSAC) estimates each pair's E
  and inliers from the noisy matches, as after a real matcher.

The ground truth is written as a COLMAP model beside the database.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sparsa.data.colmap import write_colmap
from sparsa.data.rotations import matrix_to_quaternion
from sparsa.data.scene import Scene
from sparsa.sfm.cameras import project

VERSION = 1  # bump when the generator changes: cached scenes are keyed by it
WIDTH, HEIGHT = 1024, 768
PAIR_WINDOW = 40  # ring neighbours tried for matches: views further apart share nothing
PARAMS = (800.0, 512.0, 384.0, 0.02)  # SIMPLE_RADIAL f, cx, cy, k: a 65° horizontal field of view


@dataclass(frozen=True)
class SfmSceneSpec:
    images: int
    seed: int = 0
    points_per_unit: float = 100.0  # wall points per unit of ring arc
    wall_distance: float = 8.0
    relief: float = 1.0  # wall points' radial spread
    height: float = 4.0  # wall points' heights in [-height, height]
    jitter_deg: float = 8.0  # yaw; pitch and roll get half
    pixel_noise: float = 1.0
    clutter: int = 100
    min_shared: int = 15
    inlier_ratio: float = 0.7

    @property
    def key(self) -> str:
        return "sfm-v{}-".format(VERSION) + "-".join(f"{k}={v}" for k, v in asdict(self).items())


def look_outward(angles: np.ndarray, rng: np.random.Generator, jitter_deg: float) -> np.ndarray:
    """[N, 3, 3] world-to-camera rotations: camera z along the outward radius, y down, with jitter."""
    n = len(angles)
    yaw = angles + np.radians(jitter_deg) * rng.uniform(-1, 1, n)
    pitch = np.radians(jitter_deg / 2) * rng.uniform(-1, 1, n)
    roll = np.radians(jitter_deg / 2) * rng.uniform(-1, 1, n)
    z = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)], 1)
    up = np.array([0.0, 0.0, 1.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x, y = c * x + s * y, -s * x + c * y
    return np.stack([x, y, z], 1)  # rows: camera axes in world coordinates


def make_scene(spec: SfmSceneSpec) -> tuple[Scene, list[np.ndarray], list[np.ndarray]]:
    """(ground-truth scene, per image keypoints [n_i, 2] float32, per image the point of each keypoint
    [n_i] int64, -1 for clutter)."""
    rng = np.random.default_rng(spec.seed)
    n = spec.images
    radius = n / (2 * math.pi)
    angles = 2 * math.pi * np.arange(n) / n
    centres = np.stack([radius * np.cos(angles), radius * np.sin(angles), rng.uniform(-0.3, 0.3, n)], 1)
    centres[:, :2] *= (1 + rng.uniform(-0.2, 0.2, n) / radius)[:, None]
    R = look_outward(angles, rng, spec.jitter_deg)
    t = -np.einsum("nij,nj->ni", R, centres)
    wall = radius + spec.wall_distance
    P = int(spec.points_per_unit * 2 * math.pi * radius)
    phi = rng.uniform(0, 2 * math.pi, P)
    r = wall + rng.uniform(-spec.relief, spec.relief, P)
    points = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-spec.height, spec.height, P)], 1)
    params = torch.tensor(PARAMS, dtype=torch.float64)
    keypoints, owners, obs = [], [], []
    for i in range(n):
        # candidates near the image's outward direction, then the frustum test on projections
        near = np.flatnonzero(np.cos(phi - angles[i]) > math.cos(math.pi / 2.5))
        X_cam = points[near] @ R[i].T + t[i]
        front = X_cam[:, 2] > 0.5
        near, X_cam = near[front], X_cam[front]
        px = project("SIMPLE_RADIAL", params.expand(len(near), 4), torch.from_numpy(X_cam)).numpy()
        inside = (px[:, 0] >= 0) & (px[:, 0] < WIDTH) & (px[:, 1] >= 0) & (px[:, 1] < HEIGHT)
        seen, px = near[inside], px[inside]
        obs.append((np.full(len(seen), i), seen, px))
        noisy = px + rng.normal(0, spec.pixel_noise, px.shape)
        clutter = rng.uniform([0, 0], [WIDTH, HEIGHT], (spec.clutter, 2))
        kp = np.concatenate([noisy, clutter]).astype(np.float32)
        owner = np.concatenate([seen, np.full(spec.clutter, -1)])
        order = rng.permutation(len(kp))
        keypoints.append(kp[order])
        owners.append(owner[order])
    obs_image = np.concatenate([o[0] for o in obs])
    obs_point = np.concatenate([o[1] for o in obs])
    obs_xy = np.concatenate([o[2] for o in obs])
    used, obs_point = np.unique(obs_point, return_inverse=True)
    remap = np.full(P, -1)
    remap[used] = np.arange(len(used))
    owners = [np.where(o >= 0, remap[np.maximum(o, 0)], -1) for o in owners]
    scene = Scene(model="SIMPLE_RADIAL", intrinsics=params[None].clone(), image_camera=torch.zeros(n, dtype=torch.int64),
                  rotations=matrix_to_quaternion(torch.from_numpy(R)), rotation_format="quaternion",
                  translations=torch.from_numpy(t), points=torch.from_numpy(points[used]),
                  obs_image=torch.from_numpy(obs_image), obs_point=torch.from_numpy(obs_point),
                  obs_xy=torch.from_numpy(obs_xy), camera_sizes=torch.tensor([[WIDTH, HEIGHT]]),
                  camera_ids=torch.tensor([1]), image_ids=torch.arange(1, n + 1),
                  image_names=[image_name(i) for i in range(n)])
    return scene.validate("synthetic sfm scene"), keypoints, owners


def image_name(i: int) -> str:
    return f"image{i:05d}.png"


def pair_matches(owner_i: np.ndarray, owner_j: np.ndarray, min_shared: int, inlier_ratio: float,
                 rng: np.random.Generator) -> np.ndarray | None:
    """[m, 2] uint32 keypoint matches of two images (inliers plus outliers, shuffled), or None when
    they share fewer than ``min_shared`` points."""
    shared, ki, kj = np.intersect1d(owner_i[owner_i >= 0], owner_j[owner_j >= 0], return_indices=True)
    if len(shared) < min_shared:
        return None
    ki, kj = np.flatnonzero(owner_i >= 0)[ki], np.flatnonzero(owner_j >= 0)[kj]
    n_out = int(round(len(shared) * (1 - inlier_ratio) / inlier_ratio))
    out = np.stack([rng.integers(0, len(owner_i), n_out), rng.integers(0, len(owner_j), n_out)], 1)
    m = np.concatenate([np.stack([ki, kj], 1), out])
    return np.unique(m, axis=0).astype(np.uint32)[rng.permutation(len(np.unique(m, axis=0)))]


def candidate_pairs(n: int, window: int) -> list[tuple[int, int]]:
    """Pairs (i < j) at most ``window`` places apart around the ring (views further apart share no
    point: their frusta look at different parts of the wall)."""
    return sorted({(min(i, (i + d) % n), max(i, (i + d) % n)) for i in range(n) for d in range(1, min(window, n - 1) + 1)
                   if i != (i + d) % n})


def write_database(spec: SfmSceneSpec, directory: Path, threads: int = -1) -> tuple[Path, Path]:
    """Write ``directory/database.db`` and ``directory/truth`` (a COLMAP model); returns both paths."""
    import sqlite3

    import pycolmap

    scene, keypoints, owners = make_scene(spec)
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "database.db"
    pycolmap.set_random_seed(spec.seed)
    layout = pycolmap.SyntheticDatasetOptions()
    layout.num_rigs, layout.num_cameras_per_rig, layout.num_frames_per_rig = 1, 1, spec.images
    layout.num_points3D, layout.num_points2D_without_point3D = 0, 0
    layout.camera_width, layout.camera_height = WIDTH, HEIGHT
    layout.camera_model_id = pycolmap.CameraModelId.SIMPLE_RADIAL
    layout.camera_params, layout.camera_has_prior_focal_length = list(PARAMS), True
    db = pycolmap.Database.open(str(database))
    pycolmap.synthesize_dataset(layout, db)
    db.close()
    con = sqlite3.connect(database)  # our image names (synthesize's sort in frame order), no features yet
    old = [row[0] for row in con.execute("SELECT name FROM images ORDER BY image_id")]
    con.executemany("UPDATE images SET name = ? WHERE name = ?", [(image_name(i), name) for i, name in enumerate(old)])
    for table in ("keypoints", "descriptors", "matches", "two_view_geometries"):
        con.execute(f"DELETE FROM {table}")
    con.commit()
    ids = {name: image_id for image_id, name in con.execute("SELECT image_id, name FROM images")}
    con.close()
    rng = np.random.default_rng(spec.seed + 1)
    lines = []
    db = pycolmap.Database.open(str(database))
    try:
        for i in range(spec.images):
            db.write_keypoints(ids[image_name(i)], keypoints[i])
        for i, j in candidate_pairs(spec.images, PAIR_WINDOW):
            m = pair_matches(owners[i], owners[j], spec.min_shared, spec.inlier_ratio, rng)
            if m is not None:
                db.write_matches(ids[image_name(i)], ids[image_name(j)], m)
                lines.append(f"{image_name(i)} {image_name(j)}")
    finally:
        db.close()
    pairs = directory / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = spec.seed
    pycolmap.verify_matches(str(database), str(pairs), options)
    write_colmap(scene, directory / "truth")
    return database, directory / "truth"


def write_pixel_database(images: int, seed: int, directory: Path) -> tuple[Path, Path]:
    """The path of a user with photos, offline: ``pycolmap.synthesize_dataset``'s scene (one
    SIMPLE_RADIAL camera with its focal length known, 20 points per image) rendered to PNGs by
    ``synthesize_images``, then COLMAP's SIFT (``extract_features``, on the CPU) and exhaustive
    matching with geometric verification (``match_exhaustive``). Writes ``directory/database.db``,
    ``directory/images`` and ``directory/truth``; returns the database and the truth."""
    import pycolmap

    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, images
    options.num_points3D, options.camera_has_prior_focal_length = 20 * images, True
    truth = pycolmap.synthesize_dataset(options)
    (directory / "images").mkdir(parents=True)
    pycolmap.synthesize_images(pycolmap.SyntheticImageOptions(), truth, str(directory / "images"))
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    reader.camera_params = ",".join(str(p) for p in truth.cameras[next(iter(truth.cameras))].params)
    database = directory / "database.db"
    pycolmap.extract_features(str(database), str(directory / "images"), camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(str(database), device=pycolmap.Device.cpu)
    (directory / "truth").mkdir()
    truth.write(str(directory / "truth"))
    return database, directory / "truth"
