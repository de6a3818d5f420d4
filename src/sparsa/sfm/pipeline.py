"""``sparsa sfm``: global positioning then bundle adjustment with outlier filtering (InstantSfM's
global stage after rotation averaging: GP from a random start, then BA rounds that drop
observations whose reprojection error exceeds 3x, 2x, then 1x the threshold)."""

from dataclasses import dataclass, field, replace

import torch

from sparsa.data.scene import Scene
from sparsa.errors import SparsaError
from sparsa.sfm.ba import scene_residuals, solve_ba
from sparsa.sfm.config import SFM_FILTER_PX, BAOptions, GPOptions
from sparsa.sfm.filters import keep_observations, prune_images
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
    return scene_residuals(scene).norm(dim=-1)


def filter_observations(scene: Scene, threshold_px: float, min_image_observations: int | None = None) -> tuple[Scene, dict]:
    """Drop observations above ``threshold_px`` and then points left with fewer than two. An image
    left without observations is an error, or, with ``min_image_observations``, images left with
    fewer are dropped (``images_dropped``)."""
    out, dropped = keep_observations(scene, reprojection_errors(scene) <= threshold_px)
    if min_image_observations is not None:
        out, images = prune_images(out, min_image_observations)
        if out.n_images < 2:
            raise SparsaError(f"filtering at {threshold_px:g} px leaves fewer than two images; raise --filter-px")
        return out, {"threshold_px": threshold_px, **dropped, "images_dropped": images}
    if out.n_observations == 0 or len(torch.unique(out.obs_image)) < scene.n_images:
        raise SparsaError(f"filtering at {threshold_px:g} px leaves an image without observations; "
                          "raise --filter-px")
    return out, {"threshold_px": threshold_px, **dropped}


def ba_rounds(scene: Scene, ba_options: BAOptions, *, filter_px: float = SFM_FILTER_PX, device: str = "cpu",
              progress: bool = False, min_image_observations: int | None = None) -> tuple[Scene, list[BASummary],
                                                                                           list[dict]]:
    """One BA round per filter factor, each followed by the filter (see :func:`filter_observations`
    for ``min_image_observations``); (scene, summaries, filtered).

    The rounds before the last keep the intrinsics fixed whatever ``ba_options`` says: straight after
    GP the positions are far off, and with free focal lengths BA can slide along the focal/depth
    ambiguity instead of fixing the structure (GLOMAP also refines intrinsics only once the
    structure has settled). The last round uses ``ba_options`` as given."""
    fixed = replace(ba_options, refine_focal_length=False, refine_principal_point=False, refine_extra_params=False)
    summaries, filtered = [], []
    for i, factor in enumerate(FILTER_FACTORS):
        options = ba_options if i == len(FILTER_FACTORS) - 1 else fixed
        scene, summary = solve_ba(scene, options, device=device, progress=progress)
        summaries.append(summary)
        scene, dropped = filter_observations(scene, factor * filter_px, min_image_observations)
        filtered.append(dropped)
    return scene, summaries, filtered


def run_sfm(scene: Scene, gp_options: GPOptions, ba_options: BAOptions, *, filter_px: float = SFM_FILTER_PX,
            device: str = "cpu", progress: bool = False) -> tuple[Scene, SfMReport]:
    """GP (centres and points from the scene's rotations), then :func:`ba_rounds`."""
    scene, gp = solve_gp(scene, gp_options, device=device, progress=progress)
    scene, summaries, filtered = ba_rounds(scene, ba_options, filter_px=filter_px, device=device, progress=progress)
    return scene, SfMReport(gp=gp, ba=summaries, filtered=filtered)
