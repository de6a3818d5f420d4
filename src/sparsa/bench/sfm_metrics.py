"""Accuracy of a reconstruction against the ground truth, matched by image name (the same math for
every mapper).

* **Rotation error**: the angle between each registered image's rotation and the truth's after the
  best global rotation ``G`` (the projection onto SO(3) of ``Σ R_iᵀ R_i*``, minimising
  ``Σ |R_i G - R_i*|²_F``), in degrees.
* **Centre error**: the distance of each registered camera centre to the truth's after the best
  similarity (Umeyama), in ground-truth units.
* **Relative-pose AUC**: over every pair of ground-truth images, the error is the larger of the
  relative rotation's angle error and the angle between the relative translation directions
  (infinite when either image is unregistered); the AUC at a threshold is the area under its
  recall curve up to it, divided by it.
"""

import numpy as np
import torch

from sparsa.data.scene import Scene
from sparsa.sfm.align import camera_centres, centre_errors
from sparsa.sfm.view_graph import rotation_angles

AUC_THRESHOLDS_DEG = (1.0, 3.0, 5.0)


def best_rotation(R: torch.Tensor, R_true: torch.Tensor) -> torch.Tensor:
    """[3, 3] G minimising Σ |R_i G - R*_i|²_F for rotations [N, 3, 3]."""
    U, _, Vh = torch.linalg.svd((R.transpose(1, 2) @ R_true).sum(0))
    D = torch.eye(3, dtype=R.dtype)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ D @ Vh


def pairwise_errors(R: torch.Tensor, c: torch.Tensor, R_true: torch.Tensor, c_true: torch.Tensor,
                    registered: torch.Tensor) -> torch.Tensor:
    """[N (N - 1) / 2] relative-pose errors in degrees of all pairs (i < j); inf where unregistered."""
    i, j = torch.triu_indices(len(R_true), len(R_true), 1)
    rel, rel_true = R[j] @ R[i].transpose(1, 2), R_true[j] @ R_true[i].transpose(1, 2)
    rot = rotation_angles(rel.transpose(1, 2) @ rel_true)
    # the direction of c_j - c_i seen from camera i: i's relative translation direction
    d = (R[i] @ (c[j] - c[i])[:, :, None])[..., 0]
    d_true = (R_true[i] @ (c_true[j] - c_true[i])[:, :, None])[..., 0]
    cos = (d * d_true).sum(1) / (d.norm(dim=1) * d_true.norm(dim=1)).clamp(min=1e-300)
    trans = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    err = torch.maximum(rot, trans)
    return torch.where(registered[i] & registered[j], err, torch.inf)


def auc(errors: torch.Tensor, threshold: float) -> float:
    """Area under the recall curve of ``errors`` up to ``threshold``, divided by it."""
    e = np.sort(errors.numpy())
    e = e[e < threshold]
    recall = np.arange(1, len(e) + 1) / len(errors)
    x, y = np.concatenate([[0.0], e, [threshold]]), np.concatenate([[0.0], recall, [recall[-1] if len(e) else 0.0]])
    return float(np.trapezoid(y, x) / threshold)


def accuracy(model: Scene, truth: Scene) -> dict:
    """Registered images, rotation and centre errors and relative-pose AUCs of ``model`` against ``truth``."""
    index = {name: k for k, name in enumerate(model.image_names)}
    rows = torch.tensor([index.get(name, -1) for name in truth.image_names])
    registered = rows >= 0
    R_true, c_true = truth.rotation_matrices(), camera_centres(truth)
    R_all, c_all = model.rotation_matrices(), camera_centres(model)
    R = torch.eye(3, dtype=torch.float64).repeat(len(rows), 1, 1)
    c = torch.zeros(len(rows), 3, dtype=torch.float64)
    R[registered], c[registered] = R_all[rows[registered]], c_all[rows[registered]]
    G = best_rotation(R[registered], R_true[registered])
    rot = rotation_angles((R[registered] @ G).transpose(1, 2) @ R_true[registered])
    sub = truth.replace(rotations=truth.rotations[registered], translations=truth.translations[registered],
                        image_camera=truth.image_camera[registered])
    mine = model.replace(rotations=model.rotations[rows[registered]], translations=model.translations[rows[registered]],
                         image_camera=model.image_camera[rows[registered]])
    centre = centre_errors(mine, sub)
    pair = pairwise_errors(R, c, R_true, c_true, registered)
    return {"images": int(registered.sum()), "images_truth": len(rows),
            "rotation_error_deg": {"median": float(rot.median()), "p90": float(rot.quantile(0.9))},
            "centre_error": {"median": float(centre.median()), "p90": float(centre.quantile(0.9))},
            "auc": {f"{t:g}": auc(pair, t) for t in AUC_THRESHOLDS_DEG}}
