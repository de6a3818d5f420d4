"""Seeded synthetic bundle-adjustment scenes with ground truth, noise and outliers.

``synthetic:cameras=C,points=P,seed=S[,model=SIMPLE_RADIAL][,track=12][,noise=0.5][,outliers=0]``:
P points in a ball of radius 10 around the origin; C cameras 25-35 units away in random
directions, looking near the origin (1024x768 pixels, f in [700, 900], small radial distortion);
each point is observed by a random subset of 2..``track`` of the cameras that see it (realistic
track lengths instead of every point in every view). Observations get Gaussian pixel noise
(``noise`` px) and an ``outliers`` share is replaced by uniform pixels; the start perturbs
rotations (0.01 rad), translations and points (0.1 units) and focal lengths (1%).
"""

import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import torch

from sparsa.data.rotations import angle_axis_to_matrix, matrix_to_angle_axis
from sparsa.data.scene import CAMERA_MODELS, Scene
from sparsa.errors import SparsaError

WIDTH, HEIGHT = 1024, 768
CHUNK_PAIRS = 4_000_000  # (point, camera) pairs projected at once
# key -> (type, lowest value, bound the value must stay below); ints also stay below 2**63
KEYS = {"cameras": (int, 2, None), "points": (int, 1, None), "seed": (int, 0, None), "model": (str, None, None),
        "track": (int, 2, None), "noise": (float, 0.0, None), "outliers": (float, 0.0, 1.0)}
# Peak resident bytes of synthetic_scene per unit (ru_maxrss of scenes from 2 to 4e6 cameras and 20 to 4e6
# points, rounded up). Camera: float64 pose, centre, look-at target and rotations, intrinsics and the start's
# perturbed copies. Point: position, its radius draw, the start's perturbed copy, the used-point index.
# Observation: camera and point indices, exact and noisy pixels, the nonzero() and unique() outputs.
# (point, camera) pair of one projection chunk: camera-frame point and the einsum product, repeated
# intrinsics, pixels, visibility masks, the random score and its two argsorts.
CAMERA_BYTES, POINT_BYTES, OBSERVATION_BYTES, PAIR_BYTES = 600, 200, 64, 480


@dataclass(frozen=True)
class SyntheticSpec:
    cameras: int
    points: int
    seed: int = 0
    model: str = "SIMPLE_RADIAL"
    track: int = 12
    noise: float = 0.5
    outliers: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "SyntheticSpec":
        """``synthetic:cameras=C,points=P,seed=S,...`` (the ``synthetic:`` prefix optional)."""
        body = spec.removeprefix("synthetic:")
        kw = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if key not in KEYS or not value:
                raise SparsaError(f"{spec}: bad item {item!r}; expected key=value with key in {', '.join(KEYS)}")
            if key in kw:
                raise SparsaError(f"{spec}: {key} is given twice; give each key once")
            kw[key] = parse_value(spec, key, value)
        for key in ("cameras", "points"):
            if key not in kw:
                raise SparsaError(f"{spec}: missing {key}=N")
        out = cls(**kw)
        if out.model not in CAMERA_MODELS or out.model == "BAL":
            raise SparsaError(f"{spec}: model {out.model!r}; choose one of "
                              f"{', '.join(m for m in CAMERA_MODELS if m != 'BAL')}")
        return out


def parse_value(spec: str, key: str, text: str):
    """The value of ``key=text`` in a synthetic spec, of the type and range :data:`KEYS` declares.

    Integers may be written in scientific notation when exact (``points=1e6``)."""
    kind, low, below = KEYS[key]
    if kind is str:
        return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = Decimal("nan")
    if kind is int:
        below = 2**63 if below is None else below
        ok = number.is_finite() and number == number.to_integral_value() and low <= number < below
    else:
        ok = number.is_finite() and low <= number and (below is None or number < below)
    if not ok:
        noun = "an integer" if kind is int else "a finite number"
        bound = "" if below is None else f" and < {below:g}" if kind is float else " and < 2**63"
        raise SparsaError(f"{spec}: {key}={text}: expected {noun} >= {low:g}{bound}")
    return kind(number)


def memory_bytes(spec: SyntheticSpec) -> int:
    """Estimated peak bytes :func:`synthetic_scene` allocates for ``spec`` (see :data:`CAMERA_BYTES`).

    Observations: each point draws 2..``track`` of the cameras that see it, ``(2 + track) / 2`` on average."""
    C, P = spec.cameras, spec.points
    observations = P * min((2 + spec.track) / 2, C)
    pairs = min(P, max(1, CHUNK_PAIRS // C)) * C
    return int(C * CAMERA_BYTES + P * POINT_BYTES + observations * OBSERVATION_BYTES + pairs * PAIR_BYTES)


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo, else the machine's physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_size(spec: SyntheticSpec) -> None:
    """SparsaError, before any allocation, for a scene that cannot fit in memory or leaves a camera unseen."""
    need, have = memory_bytes(spec), available_memory_bytes()
    if need > have:
        raise SparsaError(f"{describe(spec)}: needs about {need / 2**30:,.1f} GiB of memory to generate "
                          f"({CAMERA_BYTES} B per camera, {POINT_BYTES} per point, {OBSERVATION_BYTES} per "
                          f"observation), but {have / 2**30:,.1f} GiB is available; use fewer cameras or points")
    if spec.cameras > spec.points * spec.track:
        raise SparsaError(f"{describe(spec)}: {spec.cameras} cameras but at most points x track = "
                          f"{spec.points * spec.track} observations; some cameras would observe no point, "
                          "use more points")


def look_at(centres: torch.Tensor, targets: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[C, 3] camera centres and targets -> [C, 3, 3] world-to-camera rotations (Z towards the
    target, a random roll of up to 0.2 rad)."""
    z = targets - centres
    z = z / z.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=z.dtype).expand_as(z)
    x = torch.linalg.cross(up, z)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=1)  # rows: camera axes in world coordinates
    roll = (torch.rand(len(z), generator=g, dtype=z.dtype) - 0.5) * 0.4
    Rz = angle_axis_to_matrix(torch.stack([torch.zeros_like(roll), torch.zeros_like(roll), roll], -1))
    return Rz @ R


def intrinsics_for(model: str, C: int, g: torch.Generator) -> torch.Tensor:
    """[C, n] plausible parameters of ``model`` (COLMAP order)."""
    f = 700 + 200 * torch.rand(C, generator=g, dtype=torch.float64)
    values = {"f": f, "fx": f, "fy": f * (1 + 0.01 * torch.randn(C, generator=g, dtype=torch.float64)),
              "cx": torch.full((C,), WIDTH / 2, dtype=torch.float64),
              "cy": torch.full((C,), HEIGHT / 2, dtype=torch.float64)}
    small = {"k": 0.05, "k1": 0.05, "k2": 0.01, "p1": 0.001, "p2": 0.001}
    for name, scale in small.items():
        values[name] = scale * (2 * torch.rand(C, generator=g, dtype=torch.float64) - 1)
    return torch.stack([values[name] for name in CAMERA_MODELS[model][1]], -1)


def observe(spec: SyntheticSpec, R, t, K, X, g, project) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose each point's observing cameras (2..track among those that see it, in front and inside
    the image) and their exact pixels. Returns (obs_image, obs_point, pixels)."""
    C, P = len(R), len(X)
    images, points, pixels = [], [], []
    chunk = max(1, CHUNK_PAIRS // C)
    for start in range(0, P, chunk):
        Xc = X[start:start + chunk]
        Xcam = torch.einsum("cij,pj->pci", R, Xc) + t  # [p, C, 3]
        px = project(spec.model, K.repeat(len(Xc), 1), Xcam.reshape(-1, 3)).view(len(Xc), C, 2)
        seen = (Xcam[..., 2] > 0.5) & (px[..., 0] >= 0) & (px[..., 0] < WIDTH) & (px[..., 1] >= 0) & (
            px[..., 1] < HEIGHT)
        want = torch.randint(2, spec.track + 1, (len(Xc), 1), generator=g)
        score = torch.rand(len(Xc), C, generator=g).masked_fill(~seen, -1.0)
        rank = score.argsort(dim=1, descending=True).argsort(dim=1)
        keep = seen & (rank < want) & (seen.sum(1, keepdim=True) >= 2)
        p_idx, c_idx = keep.nonzero(as_tuple=True)
        images.append(c_idx)
        points.append(p_idx + start)
        pixels.append(px[p_idx, c_idx])
    return torch.cat(images), torch.cat(points), torch.cat(pixels)


def synthetic_scene(spec: SyntheticSpec, project) -> tuple[Scene, Scene]:
    """(noisy start with noisy observations, ground truth with the same observations).

    ``project(model, params [M, n], X_cam [M, 3]) -> [M, 2]`` is the camera projection (passed in
    so this data module needs no solver code). Points seen by fewer than two cameras are dropped.
    """
    check_size(spec)
    g = torch.Generator().manual_seed(spec.seed)
    f64 = torch.float64
    C, P = spec.cameras, spec.points
    X = torch.randn(P, 3, generator=g, dtype=f64)
    X = X / X.norm(dim=-1, keepdim=True) * 10 * torch.rand(P, 1, generator=g, dtype=f64) ** (1 / 3)
    dirs = torch.randn(C, 3, generator=g, dtype=f64)
    dirs[:, 2] = dirs[:, 2].abs() * 0.5  # cameras above the horizon, not straight overhead
    centres = dirs / dirs.norm(dim=-1, keepdim=True) * (25 + 10 * torch.rand(C, 1, generator=g, dtype=f64))
    R = look_at(centres, 2 * torch.randn(C, 3, generator=g, dtype=f64), g)
    t = -(R @ centres[:, :, None])[..., 0]
    K = intrinsics_for(spec.model, C, g)
    obs_image, obs_point, pixels = observe(spec, R, t, K, X, g, project)
    used, obs_point = torch.unique(obs_point, return_inverse=True)
    X = X[used]
    if obs_image.numel() == 0 or len(torch.unique(obs_image)) < C:
        raise SparsaError(f"{describe(spec)}: some cameras observe no point; use more points")
    obs_xy = pixels + spec.noise * torch.randn(pixels.shape, generator=g, dtype=f64)
    n_out = int(round(spec.outliers * len(obs_xy)))
    if n_out:
        which = torch.randperm(len(obs_xy), generator=g)[:n_out]
        obs_xy[which] = torch.rand(n_out, 2, generator=g, dtype=f64) * torch.tensor([WIDTH, HEIGHT], dtype=f64)
    sizes = torch.tensor([[WIDTH, HEIGHT]], dtype=torch.int64).expand(C, 2).clone()
    truth = Scene(model=spec.model, intrinsics=K, image_camera=torch.arange(C), rotations=matrix_to_angle_axis(R),
                  rotation_format="angle_axis", translations=t, points=X, obs_image=obs_image,
                  obs_point=obs_point, obs_xy=obs_xy, camera_sizes=sizes)
    noise = torch.randn(C, 3, generator=g, dtype=f64) * 0.01
    start = truth.replace(
        rotations=matrix_to_angle_axis(angle_axis_to_matrix(noise) @ R),
        translations=t + 0.1 * torch.randn(C, 3, generator=g, dtype=f64),
        points=X + 0.1 * torch.randn(X.shape, generator=g, dtype=f64),
        intrinsics=K.clone())
    for i in range(len(CAMERA_MODELS[spec.model][1])):
        if CAMERA_MODELS[spec.model][1][i] in ("f", "fx", "fy"):
            start.intrinsics[:, i] *= 1 + 0.01 * torch.randn(C, generator=g, dtype=f64)
    return start.validate(describe(spec)), truth.validate(describe(spec))


def describe(spec: SyntheticSpec) -> str:
    return "synthetic:" + ",".join(f"{k}={v}" for k, v in vars(spec).items())
