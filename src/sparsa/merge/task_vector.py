"""Task vectors ``tau_t = theta_finetuned - theta_base``, checked tensor by tensor.

Both sides are mappings from tensor name to tensor, so a lazy reader (one tensor in memory at a
time, e.g. ``safetensors.safe_open``) works as well as a loaded state dict.
"""

from collections.abc import Iterator, Mapping

import torch

from sparsa.errors import SparsaError


def check_same_tensors(base: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise unless ``other`` holds exactly ``base``'s tensor names (shapes are checked per tensor)."""
    missing, extra = sorted(set(base) - set(other)), sorted(set(other) - set(base))
    if missing:
        raise SparsaError(f"{what}: tensor {missing[0]!r} of the base model is missing ({len(missing)} missing)")
    if extra:
        raise SparsaError(f"{what}: tensor {extra[0]!r} is not in the base model ({len(extra)} extra)")


def iter_task_vector(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                     what: str = "fine-tuned model") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tau)`` per tensor in ``base``'s order, fp32, one tensor at a time.

    Args:
        base, finetuned: name -> tensor of any shape; the same names and shapes.
        what: names the fine-tuned model in errors.
    Raises:
        SparsaError naming the tensor: different names or shapes, a non-finite difference.
    """
    check_same_tensors(base, finetuned, what)
    for name in base:
        b, f = base[name], finetuned[name]
        if tuple(b.shape) != tuple(f.shape):
            raise SparsaError(f"{what}: tensor {name!r} has shape {list(f.shape)}, the base {list(b.shape)}")
        tau = f.float() - b.float()
        if not bool(torch.isfinite(tau).all()):
            raise SparsaError(f"{what}: tensor {name!r} has a non-finite task-vector entry (NaN or inf)")
        yield name, tau


def task_vector(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                what: str = "fine-tuned model") -> dict[str, torch.Tensor]:
    """``{name: finetuned[name] - base[name]}`` in fp32 (see :func:`iter_task_vector`)."""
    return dict(iter_task_vector(base, finetuned, what))


def apply_task_vector(base: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor],
                      weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``base + weight * tau`` per tensor, each in the base tensor's dtype."""
    check_same_tensors(base, tau, "task vector")
    return {name: (b.float() + weight * tau[name].float()).to(b.dtype) for name, b in base.items()}
