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
