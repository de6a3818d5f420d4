"""Point-partitioned bundle adjustment over ``torch.distributed`` (``torchrun -m sparsa ba ...``).

Every process reads the whole scene, keeps a contiguous range of points holding about
1/world of the observations, and runs the same LM iterations: camera-side sums are completed
by all-reduces (:mod:`sparsa.sfm.comm`), so each CG iteration costs one all-reduce of a
camera-sized vector. The points are gathered back at the end.
"""

import os

import torch

from sparsa.data.scene import Scene
from sparsa.sfm.comm import LocalComm, TorchComm


def init_comm(device: str) -> LocalComm:
    """A :class:`TorchComm` when launched by torchrun (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on
    CUDA, one GPU per local rank), else a :class:`LocalComm`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return LocalComm()
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return TorchComm()


def point_ranges(scene: Scene, world_size: int) -> list[tuple[int, int]]:
    """Contiguous point ranges [lo, hi), one per process, with balanced observation counts."""
    counts = torch.bincount(scene.obs_point, minlength=scene.n_points).cumsum(0)
    total = int(counts[-1]) if scene.n_points else 0
    cuts = [0] + [int(torch.searchsorted(counts, total * r // world_size, right=True)) for r in
                  range(1, world_size)] + [scene.n_points]
    cuts = [min(max(c, 0), scene.n_points) for c in cuts]
    return [(cuts[r], max(cuts[r], cuts[r + 1])) for r in range(world_size)]


def partition(scene: Scene, lo: int, hi: int) -> Scene:
    """The scene restricted to points [lo, hi) and their observations (all images kept)."""
    keep = (scene.obs_point >= lo) & (scene.obs_point < hi)
    return scene.replace(points=scene.points[lo:hi], obs_image=scene.obs_image[keep],
                         obs_point=scene.obs_point[keep] - lo, obs_xy=scene.obs_xy[keep],
                         point_ids=None if scene.point_ids is None else scene.point_ids[lo:hi],
                         point_colors=None if scene.point_colors is None else scene.point_colors[lo:hi])


def solve_ba_distributed(scene: Scene, options, *, device: str = "cpu", progress: bool = False,
                         comm: LocalComm) -> tuple[Scene, object]:
    """:func:`~sparsa.sfm.solve_ba` with the points split across ``comm``'s processes; every
    process returns the whole optimised scene and the same summary."""
    from sparsa.sfm.ba import solve_ba

    if comm.world_size == 1:
        return solve_ba(scene, options, device=device, progress=progress)
    ranges = point_ranges(scene, comm.world_size)
    lo, hi = ranges[comm.rank]
    local, summary = solve_ba(partition(scene, lo, hi), options, device=device, progress=progress, comm=comm)
    points = comm.all_gather(local.points, [b - a for a, b in ranges])
    return local.replace(points=points, obs_image=scene.obs_image, obs_point=scene.obs_point, obs_xy=scene.obs_xy,
                         point_ids=scene.point_ids, point_colors=scene.point_colors), summary
