"""How close a compressed task vector is to the task vector it stands for."""

from collections.abc import Mapping

import torch

from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.task_vector import iter_task_vector


def task_vector_fidelity(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                         compressed: CompressedTaskVector, what: str = "fine-tuned model") -> dict:
    """``rel_err = ||tau - tau_hat|| / ||tau||`` and ``cosine(tau, tau_hat)`` over the whole vector
    (every tensor flattened and joined), one tensor in memory at a time; float64 sums."""
    dot = err2 = tau2 = hat2 = 0.0
    for name, tau in iter_task_vector(base, finetuned, what):
        t, h = tau.double().reshape(-1), compressed.tensor(name).double().reshape(-1)
        dot += float(t @ h)
        err2 += float((t - h).square().sum())
        tau2 += float(t.square().sum())
        hat2 += float(h.square().sum())
    return {"rel_err": err2**0.5 / tau2**0.5 if tau2 else 0.0,
            "cosine": dot / (tau2 * hat2) ** 0.5 if tau2 and hat2 else 0.0}
