"""``sparsa sfm``: global positioning then bundle adjustment with outlier filtering (InstantSfM's
global stage after rotation averaging: GP from a random start, then BA rounds that drop
observations whose reprojection error exceeds 3x, 2x, then 1x the threshold)."""

from dataclasses import dataclass, field

import torch

from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from sparsa.sfm.ba import BAProblem, build_problem, solve_ba
from sparsa.sfm.config import BAOptions, GPOptions
from sparsa.sfm.gp import solve_gp
from sparsa.sfm.summary import BASummary

FILTER_FACTORS = (3.0, 2.0, 1.0)


@dataclass
class SfMReport:
    gp: BASummary
    ba: list[BASummary] = field(default_factory=list)
    filtered: list[dict] = field(default_factory=list)  # per round: threshold_px, observations, points dropped


def reprojection_errors(scene: Scene) -> torch.Tensor:
    """[M] |r_o| in pixels."""
    problem, state = build_problem(scene, BAOptions())
    return BAProblem.reprojection(problem, state).norm(dim=-1)


def filter_observations(scene: Scene, threshold_px: float) -> tuple[Scene, dict]:
    """Drop observations above ``threshold_px`` and then points left with fewer than two."""
    keep = reprojection_errors(scene) <= threshold_px
    counts = torch.bincount(scene.obs_point[keep], minlength=scene.n_points)
    keep &= counts[scene.obs_point] >= 2
    points = torch.unique(scene.obs_point[keep])
    if len(torch.unique(scene.obs_image[keep])) < scene.n_images:
        raise SparsaError(f"filtering at {threshold_px:g} px leaves an image without observations; "
                          "raise --filter-px")
    remap = torch.full((scene.n_points,), -1, dtype=torch.int64)
    remap[points] = torch.arange(len(points))
    out = scene.replace(points=scene.points[points], obs_image=scene.obs_image[keep],
                        obs_point=remap[scene.obs_point[keep]], obs_xy=scene.obs_xy[keep],
                        point_ids=None if scene.point_ids is None else scene.point_ids[points],
                        point_colors=None if scene.point_colors is None else scene.point_colors[points])
    return out, {"threshold_px": threshold_px, "observations_dropped": int((~keep).sum()),
                 "points_dropped": scene.n_points - len(points)}


def run_sfm(scene: Scene, gp_options: GPOptions, ba_options: BAOptions, *, filter_px: float = 4.0,
            device: str = "cpu", progress: bool = False) -> tuple[Scene, SfMReport]:
    """GP (centres and points from the scene's rotations), then one BA round per filter factor."""
    scene, gp = solve_gp(scene, gp_options, device=device, progress=progress)
    report = SfMReport(gp=gp)
    for factor in FILTER_FACTORS:
        scene, summary = solve_ba(scene, ba_options, device=device, progress=progress)
        report.ba.append(summary)
        scene, dropped = filter_observations(scene, factor * filter_px)
        report.filtered.append(dropped)
    return scene, report
