"""Documented filtering before and between solves: observations dropped with their counts
reported, never silently (points behind their camera, tracks shorter than two views)."""

import torch

from sparsa.data.scene import Scene
from sparsa.sfm.cameras import MODELS


def keep_observations(scene: Scene, keep: torch.Tensor, min_track: int = 2) -> tuple[Scene, dict]:
    """``scene`` with the observations where ``keep`` [M] bool holds, minus those of points left with
    fewer than ``min_track`` views; points without observations are removed (indices remapped)."""
    counts = torch.bincount(scene.obs_point[keep], minlength=scene.n_points)
    keep = keep & (counts[scene.obs_point] >= min_track)
    points = torch.unique(scene.obs_point[keep])
    remap = torch.full((scene.n_points,), -1, dtype=torch.int64)
    remap[points] = torch.arange(len(points))
    out = scene.replace(points=scene.points[points], obs_image=scene.obs_image[keep],
                        obs_point=remap[scene.obs_point[keep]], obs_xy=scene.obs_xy[keep],
                        point_ids=None if scene.point_ids is None else scene.point_ids[points],
                        point_colors=None if scene.point_colors is None else scene.point_colors[points])
    return out, {"observations_dropped": int((~keep).sum()), "points_dropped": scene.n_points - len(points)}


def depths(scene: Scene) -> torch.Tensor:
    """[M] depth of each observed point along its camera's viewing direction (> 0 in front; BAL
    cameras look down -Z)."""
    R = scene.rotation_matrices()[scene.obs_image]
    z = (R[:, 2] * scene.points[scene.obs_point]).sum(-1) + scene.translations[scene.obs_image, 2]
    return z * MODELS[scene.model].sign


def drop_unusable(scene: Scene) -> tuple[Scene, dict]:
    """Drop observations of points behind (or at) their camera, then points seen fewer than twice.

    Returns:
        (the filtered scene, {"behind_camera": n, "observations_dropped": n, "points_dropped": n}).
    """
    front = depths(scene) > 0
    out, report = keep_observations(scene, front)
    return out, {"behind_camera": int((~front).sum()), **report}


def drop_images(scene: Scene, keep: torch.Tensor) -> Scene:
    """``scene`` without the images where ``keep`` [I] bool is False, their observations, and the
    points those leave with fewer than two views (image indices remapped)."""
    scene, _ = keep_observations(scene, keep[scene.obs_image])
    rows = torch.full((scene.n_images,), -1, dtype=torch.int64)
    rows[keep] = torch.arange(int(keep.sum()))
    return scene.replace(rotations=scene.rotations[keep], translations=scene.translations[keep],
                         image_camera=scene.image_camera[keep], obs_image=rows[scene.obs_image],
                         image_ids=None if scene.image_ids is None else scene.image_ids[keep],
                         image_names=None if scene.image_names is None else
                         [n for n, k in zip(scene.image_names, keep.tolist()) if k])


def prune_images(scene: Scene, min_observations: int) -> tuple[Scene, int]:
    """(``scene`` without the images seen in fewer than ``min_observations`` observations, how many went);
    repeated until every image left has that many (dropping an image can shorten others' tracks)."""
    dropped = 0
    while True:
        counts = torch.bincount(scene.obs_image, minlength=scene.n_images)
        weak = counts < min_observations
        if not bool(weak.any()):
            return scene, dropped
        dropped += int(weak.sum())
        scene = drop_images(scene, ~weak)
