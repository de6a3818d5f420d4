"""Global SfM from a COLMAP database (GLOMAP's pipeline, InstantSfM's torch solvers):
relative poses -> view graph -> rotation averaging -> tracks -> global positioning -> BA rounds
with filtering -> retriangulation -> BA.

Every stage reports its seconds and counts; images outside the view graph's largest component
are left out and counted, never silently.
"""

import resource
import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from sparsa.data.colmap_db import ViewDatabase
from sparsa.data.rotations import matrix_to_quaternion
from sparsa.data.scene import Scene
from sparsa.data.synthetic_scene import available_memory_bytes
from sparsa.errors import SparsaError
from sparsa.sfm.align import camera_centres
from sparsa.sfm.ba import scene_residuals, solve_ba
from sparsa.sfm.config import SFM_FILTER_PX, BAOptions, GlobalMapperOptions, GPOptions
from sparsa.sfm.filters import depths, drop_images, keep_observations, prune_images
from sparsa.sfm.gp import angular_errors, solve_gp, world_rays
from sparsa.sfm.pipeline import ba_rounds
from sparsa.sfm.relative_pose import image_rays, relative_poses, sample_matches
from sparsa.sfm.rotation_averaging import average_rotations, residuals
from sparsa.sfm.tracks import Tracks, build_tracks
from sparsa.sfm.triangulate import max_ray_angle_deg, triangulate
from sparsa.sfm.view_graph import largest_component, triangle_errors

DEGENERATE_CONFIGS = (0, 1, 7)  # UNDEFINED, DEGENERATE, WATERMARK
# Peak memory model, fit on the bench's ring scenes (2 cores; peak RSS 0.75 GB at 200 images and
# 143k track observations, 2.15 GB at 1000 and 890k): the interpreter and libraries, the per
# observation arrays of GP and BA, and a dense reduced camera system (S and its factor).
BASE_BYTES = 500 * 2**20
OBSERVATION_BYTES = 1300


class StageClock:
    """Records each stage's seconds and counts, and advances the progress bar."""

    def __init__(self, progress: bool, stages: int):
        self.stages: list[dict] = []
        self.total, self.progress, self.bar = stages, progress, None
        self.start = time.perf_counter()

    def done(self, name: str, **counts) -> None:
        """Record stage ``name``; the bar appears with the first stage done, so input refused by
        the first stage prints nothing but its error."""
        now = time.perf_counter()
        self.stages.append({"stage": name, "seconds": now - self.start, **counts})
        self.start = now
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc="global SfM", unit="stage", disable=not self.progress)
        self.bar.set_postfix_str(name)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def view_graph(db: ViewDatabase, options: GlobalMapperOptions, clock: StageClock) -> tuple[torch.Tensor, torch.Tensor,
                                                                                             torch.Tensor]:
    """(kept edges [E] bool, relative rotations [E, 3, 3], inlier counts [E]) after the pair filters,
    the triangle test and the largest component."""
    rays = image_rays(db)
    rel = relative_poses(db, sample_matches(db, rays))
    usable = ~torch.isin(db.config, torch.tensor(DEGENERATE_CONFIGS))
    keep = usable & (rel.inliers >= options.min_inliers) & (rel.angle_deg >= options.min_pair_angle_deg)
    if not bool(keep.any()):
        raise SparsaError(f"{db.path}: none of its {db.n_pairs} pairs has a usable relative pose (at least "
                          f"{options.min_inliers} inliers, {options.min_pair_angle_deg:g} deg median triangulation "
                          "angle); nothing to reconstruct")
    clock.done("relative poses", pairs=db.n_pairs, pairs_kept=int(keep.sum()), stored_poses=int(rel.stored.sum()),
               few_inliers=int((usable & (rel.inliers < options.min_inliers)).sum()),
               small_angle=int((usable & (rel.inliers >= options.min_inliers)
                                & (rel.angle_deg < options.min_pair_angle_deg)).sum()),
               degenerate=int((~usable).sum()))
    keep &= in_component(db, keep)
    edges = torch.nonzero(keep).flatten()
    err, count = triangle_errors(db.n_images, db.pairs[edges], rel.R[edges])
    bad = edges[(count > 0) & (err > options.max_triangle_error_deg)]
    keep[bad] = False
    keep &= in_component(db, keep)
    clock.done("view graph", pairs_kept=int(keep.sum()), triangle_inconsistent=len(bad),
               images=int(torch.unique(db.pairs[keep]).numel()))
    return keep, rel.R, rel.inliers


def in_component(db: ViewDatabase, keep: torch.Tensor) -> torch.Tensor:
    """[E] bool: edges with both images in the largest component of the kept edges."""
    images = largest_component(db.n_images, db.pairs, keep)
    return images[db.pairs[:, 0]] & images[db.pairs[:, 1]]


def global_rotations(db: ViewDatabase, keep: torch.Tensor, R: torch.Tensor, inliers: torch.Tensor,
                     options: GlobalMapperOptions, clock: StageClock, device: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """(images [I'] int64 database rows, rotations [I', 3, 3], kept edges [E] bool): averaged twice, the
    edges off by more than ``max_rotation_error_deg`` dropped in between."""
    dropped = 0
    for round_ in range(2):
        images = torch.unique(db.pairs[keep])
        local = torch.full((db.n_images,), -1, dtype=torch.int64)
        local[images] = torch.arange(len(images))
        edges = torch.nonzero(keep).flatten()
        pairs = local[db.pairs[edges]]
        rotations, report = average_rotations(len(images), pairs, R[edges], inliers[edges], options.rotation,
                                              device=device)
        if round_ == 1:
            break
        error = torch.rad2deg(residuals(rotations, pairs, R[edges]).norm(dim=1))
        bad = edges[error > options.max_rotation_error_deg]
        if len(bad) == 0:
            break
        dropped = len(bad)
        keep = keep.clone()
        keep[bad] = False
        keep &= in_component(db, keep)
    clock.done("rotation averaging", images=len(images), pairs_kept=int(keep.sum()), pairs_dropped=dropped,
               iterations=report.iterations, median_residual_deg=report.median_residual_deg)
    return images, rotations, keep


def initial_scene(db: ViewDatabase, images: torch.Tensor, rotations: torch.Tensor, tracks: Tracks) -> Scene:
    """The scene GP starts from: averaged rotations, zero positions and points, track observations.
    ``tracks`` index images by their row in ``images``; point ids are track index + 1."""
    xy = keypoint_xy(db, images[tracks.obs_image], tracks.obs_keypoint)
    n = len(images)
    return Scene(model=db.model, intrinsics=db.intrinsics, image_camera=db.image_camera[images],
                 rotations=matrix_to_quaternion(rotations), rotation_format="quaternion",
                 translations=torch.zeros(n, 3, dtype=torch.float64),
                 points=torch.zeros(tracks.n_tracks, 3, dtype=torch.float64), obs_image=tracks.obs_image,
                 obs_point=tracks.obs_track, obs_xy=xy, camera_sizes=db.camera_sizes, camera_ids=db.camera_ids,
                 image_ids=db.image_ids[images], point_ids=torch.arange(1, tracks.n_tracks + 1),
                 image_names=[db.image_names[int(i)] for i in images]).validate(db.path)


def keypoint_xy(db: ViewDatabase, image: torch.Tensor, keypoint: torch.Tensor) -> torch.Tensor:
    """[M, 2] pixels of keypoints ``keypoint`` [M] of database images ``image`` [M]."""
    counts = torch.tensor([len(k) for k in db.keypoints], dtype=torch.int64)
    offsets = torch.cumsum(counts, 0) - counts
    flat = torch.cat([torch.from_numpy(k) for k in db.keypoints])
    return flat[offsets[image] + keypoint]


def retriangulate(scene: Scene, everything: Scene, filter_px: float, min_angle_deg: float) -> tuple[Scene, dict]:
    """Every track of ``everything`` (the scene GP started from; point ids identify tracks) on the images
    ``scene`` kept, with its poses and intrinsics:
    BA-refined points where ``scene`` kept the track, linear triangulation elsewhere; then only
    observations within ``filter_px`` and in front of their camera, and tracks of two or more such
    views spanning ``min_angle_deg``."""
    full = drop_images(everything, torch.isin(everything.image_ids, scene.image_ids))  # images BA kept, in order
    full = full.replace(intrinsics=scene.intrinsics, rotations=scene.rotations, translations=scene.translations)
    centres = camera_centres(full)
    points, ok = triangulate(centres, world_rays(full), full.obs_image,
                             full.obs_point, full.n_points)
    row_of_id = torch.full((int(full.point_ids.max()) + 1,), -1, dtype=torch.int64)
    row_of_id[full.point_ids] = torch.arange(full.n_points)
    kept = row_of_id[scene.point_ids]
    points[kept] = scene.points
    ok[kept] = True
    full = full.replace(points=points)
    error = scene_residuals(full).norm(dim=-1)
    good = (error <= filter_px) & (depths(full) > 0) & ok[full.obs_point]
    angle = max_ray_angle_deg(points, centres, full.obs_image, full.obs_point, full.n_points)
    good &= angle[full.obs_point] >= min_angle_deg
    out, _ = keep_observations(full, good)
    return out, {"observations": out.n_observations, "points": out.n_points,
                 "observations_added": out.n_observations - scene.n_observations,
                 "points_added": out.n_points - scene.n_points}


def estimate_peak_bytes(observations: int, images: int, ba_options: BAOptions) -> int:
    """Expected peak resident memory of GP and BA on ``observations`` track observations."""
    unknowns = 6 * images
    dense = ba_options.linear_solver == "dense_schur" or (
        ba_options.linear_solver == "auto" and unknowns <= ba_options.dense_schur_max_size)
    return BASE_BYTES + OBSERVATION_BYTES * observations + (3 * 8 * unknowns**2 if dense else 0)


def check_memory(db: ViewDatabase, observations: int, images: int, ba_options: BAOptions) -> int:
    """The estimate of :func:`estimate_peak_bytes`; SparsaError before GP when it exceeds the memory available."""
    need, have = estimate_peak_bytes(observations, images, ba_options), available_memory_bytes()
    if need > have:
        raise SparsaError(f"{db.path}: {images} images and {observations:,} track observations need about "
                          f"{need / 2**30:.1f} GiB of memory, but {have / 2**30:.1f} GiB is available; "
                          "--max-tracks caps the tracks")
    return need


def peak_memory_bytes(device: str) -> int:
    """The process's peak resident memory (CPU) or the device's peak allocation (CUDA)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def map_database(db: ViewDatabase, options: GlobalMapperOptions, gp_options: GPOptions, ba_options: BAOptions, *,
                 filter_px: float = SFM_FILTER_PX, device: str = "cpu", progress: bool = False) -> tuple[Scene, dict]:
    """The reconstruction of ``db``'s largest reconstructible component and the report: per stage
    seconds and counts, images left out, final reprojection RMSE (px) and peak memory."""
    clock = StageClock(progress, 8)
    try:
        keep, R, inliers = view_graph(db, options, clock)
        images, rotations, keep = global_rotations(db, keep, R, inliers, options, clock, device)
        local = torch.full((db.n_images,), -1, dtype=torch.int64)
        local[images] = torch.arange(len(images))
        edges = torch.nonzero(keep).flatten()
        tracks = build_tracks([len(db.keypoints[int(i)]) for i in images], local[db.pairs[edges]],
                              [db.matches[int(e)] for e in edges], min_views=options.min_track_views,
                              max_views=options.max_track_views, max_tracks=options.max_tracks)
        seen = torch.unique(tracks.obs_image)
        if len(seen) < 2:
            raise SparsaError(f"{db.path}: no image pair shares a track of {options.min_track_views} or more views; "
                              "nothing to reconstruct")
        if len(seen) < len(images):  # images whose every track was dropped
            keep_rows = torch.full((len(images),), -1, dtype=torch.int64)
            keep_rows[seen] = torch.arange(len(seen))
            images, rotations = images[seen], rotations[seen]
            tracks = replace(tracks, obs_image=keep_rows[tracks.obs_image])
        estimate = check_memory(db, len(tracks.obs_image), len(images), ba_options)
        clock.done("tracks", images=len(images), **tracks.report, estimated_peak_bytes=estimate)
        start = initial_scene(db, images, rotations, tracks)
        scene, gp = solve_gp(start, gp_options, device=device)
        scene, dropped = keep_observations(scene, angular_errors(scene) <= options.max_gp_angle_deg)
        scene, pruned = prune_images(scene, options.min_image_observations)
        clock.done("global positioning", iterations=gp.iterations, rmse=gp.final_rmse,
                   observations=scene.n_observations, observations_dropped=dropped["observations_dropped"],
                   images_dropped=pruned)
        scene, rounds, filtered = ba_rounds(scene, ba_options, filter_px=filter_px, device=device,
                                            min_image_observations=options.min_image_observations)
        clock.done("bundle adjustment", rounds=len(rounds), rmse_px=rounds[-1].final_rmse,
                   observations=scene.n_observations, points=scene.n_points,
                   observations_dropped=sum(f["observations_dropped"] for f in filtered),
                   images_dropped=sum(f["images_dropped"] for f in filtered))
        scene, added = retriangulate(scene, start, filter_px, options.min_triangulation_angle_deg)
        scene, pruned = prune_images(scene, options.min_image_observations)
        clock.done("retriangulation", **added, images_dropped=pruned)
        scene, final = solve_ba(scene, ba_options, device=device)
        clock.done("final bundle adjustment", iterations=final.iterations, rmse_px=final.final_rmse)
    finally:
        clock.close()
    seconds = sum(s["seconds"] for s in clock.stages)
    return scene, {"images_in_database": db.n_images, "images": scene.n_images,
                   "images_left_out": db.n_images - scene.n_images, "points": scene.n_points,
                   "observations": scene.n_observations, "rmse_px": final.final_rmse, "seconds": seconds,
                   "peak_memory_bytes": peak_memory_bytes(device), "estimated_peak_bytes": estimate,
                   "stages": clock.stages,
                   "gp": gp.to_dict(), "ba": [b.to_dict() for b in rounds], "filtered": filtered,
                   "final_ba": final.to_dict()}
