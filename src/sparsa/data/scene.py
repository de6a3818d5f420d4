"""A bundle-adjustment scene: cameras (intrinsics), images (poses), 3D points and the
observations tying them, as plain tensors with explicit index arrays.

Readers (BAL, COLMAP, synthetic) produce a :class:`Scene`; the solvers in :mod:`sparsa.sfm`
consume and return one; writers take one. Rotations stay in the parameterization of their source
(angle-axis for BAL, quaternions for COLMAP) so that a read/write round trip is bit-exact.

Conventions: ``X_cam = R X_world + t`` (world to camera). Pixels follow each camera model
(:data:`CAMERA_MODELS`); for BAL they are relative to the image centre, as in the BAL files.
"""

from dataclasses import dataclass, fields, replace

import torch

from sparsa.data.rotations import angle_axis_to_matrix, quaternion_to_matrix
from sparsa.errors import SparsaError

# name -> (COLMAP model id, parameter names in COLMAP order). BAL is the BAL files' camera:
# p = -X_cam[:2] / X_cam[2], pixel = f (1 + k1 |p|^2 + k2 |p|^4) p.
CAMERA_MODELS = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    "BAL": (None, ("f", "k1", "k2")),
}
ROTATION_FORMATS = {"angle_axis": 3, "quaternion": 4}  # name -> components per image


@dataclass
class Scene:
    """Cameras, images, points and observations.

    Args:
        model: a key of :data:`CAMERA_MODELS`, shared by every camera.
        intrinsics: [K, n_params] float64, one row per camera (COLMAP order).
        image_camera: [I] int64, the camera (row of ``intrinsics``) of each image.
        rotations: [I, 3] angle-axis or [I, 4] quaternion (w, x, y, z), world to camera.
        rotation_format: ``angle_axis`` or ``quaternion``.
        translations: [I, 3] float64.
        points: [P, 3] float64 world coordinates.
        obs_image, obs_point: [M] int64, the image and point of each observation.
        obs_xy: [M, 2] float64 observed pixels.
        camera_sizes: [K, 2] int64 (width, height) or None.
        camera_ids, image_ids, point_ids: [K], [I], [P] int64 source ids (COLMAP) or None.
        image_names: I strings or None.
        point_colors: [P, 3] uint8 or None.
    """

    model: str
    intrinsics: torch.Tensor
    image_camera: torch.Tensor
    rotations: torch.Tensor
    rotation_format: str
    translations: torch.Tensor
    points: torch.Tensor
    obs_image: torch.Tensor
    obs_point: torch.Tensor
    obs_xy: torch.Tensor
    camera_sizes: torch.Tensor | None = None
    camera_ids: torch.Tensor | None = None
    image_ids: torch.Tensor | None = None
    point_ids: torch.Tensor | None = None
    image_names: list[str] | None = None
    point_colors: torch.Tensor | None = None

    @property
    def n_cameras(self) -> int:
        return self.intrinsics.shape[0]

    @property
    def n_images(self) -> int:
        return self.translations.shape[0]

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    @property
    def n_observations(self) -> int:
        return self.obs_xy.shape[0]

    def rotation_matrices(self) -> torch.Tensor:
        """[I, 3, 3] world-to-camera rotations."""
        if self.rotation_format == "angle_axis":
            return angle_axis_to_matrix(self.rotations)
        return quaternion_to_matrix(self.rotations)

    def replace(self, **changes) -> "Scene":
        return replace(self, **changes)

    def to(self, device) -> "Scene":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def validate(self, source: str) -> "Scene":
        """Check shapes, dtypes, index ranges and finiteness; raise :class:`SparsaError` naming
        ``source`` and the offending array. Returns ``self``."""
        if self.model not in CAMERA_MODELS:
            raise SparsaError(f"{source}: camera model {self.model!r} unsupported; choose one of "
                              f"{', '.join(CAMERA_MODELS)}")
        if self.rotation_format not in ROTATION_FORMATS:
            raise SparsaError(f"{source}: rotation_format {self.rotation_format!r} unknown")
        K, I, P, M = self.n_cameras, self.n_images, self.n_points, self.n_observations
        shapes = {
            "intrinsics": (self.intrinsics, (K, len(CAMERA_MODELS[self.model][1])), torch.float64),
            "image_camera": (self.image_camera, (I,), torch.int64),
            "rotations": (self.rotations, (I, ROTATION_FORMATS[self.rotation_format]), torch.float64),
            "translations": (self.translations, (I, 3), torch.float64),
            "points": (self.points, (P, 3), torch.float64),
            "obs_image": (self.obs_image, (M,), torch.int64),
            "obs_point": (self.obs_point, (M,), torch.int64),
            "obs_xy": (self.obs_xy, (M, 2), torch.float64),
            "camera_sizes": (self.camera_sizes, (K, 2), torch.int64),
            "camera_ids": (self.camera_ids, (K,), torch.int64),
            "image_ids": (self.image_ids, (I,), torch.int64),
            "point_ids": (self.point_ids, (P,), torch.int64),
            "point_colors": (self.point_colors, (P, 3), torch.uint8),
        }
        for name, (t, shape, dtype) in shapes.items():
            if t is None:
                continue
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise SparsaError(f"{source}: {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise SparsaError(f"{source}: {name} has {int((~torch.isfinite(t)).sum())} non-finite values")
        if self.image_names is not None and len(self.image_names) != I:
            raise SparsaError(f"{source}: {len(self.image_names)} image names for {I} images")
        for name, idx, n in (("image_camera", self.image_camera, K), ("obs_image", self.obs_image, I),
                             ("obs_point", self.obs_point, P)):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                bad = int(idx[(idx < 0) | (idx >= n)][0])
                raise SparsaError(f"{source}: {name} holds index {bad}, outside [0, {n})")
        if self.rotation_format == "quaternion" and I and bool((self.rotations.norm(dim=-1) < 1e-12).any()):
            raise SparsaError(f"{source}: rotations hold a zero quaternion")
        return self
