"""T-Switch (arXiv 2412.00054, "Less is More: Efficient Model Merging with Binary Task Switch").

Per tensor of a task vector ``tau`` (every tensor of one or more dimensions; 0-d ones are kept raw):

1. **Mask**: keep the ``1 - drop_ratio`` largest-magnitude positive entries and, separately, the
   ``1 - drop_ratio`` largest-magnitude negative entries (``k = round((1 - drop_ratio) * count)``
   of each sign; ``torch.topk`` breaks ties).
2. **Sign**: ``s = sign(tau)`` on the kept entries, 0 elsewhere.
3. **Scale**: one per tensor, ``||tau_kept||_2 / sqrt(nnz)`` (``l2``, the paper's), ``mean|tau_kept|``
   (``lsq``) or ``||tau||_1 / nnz`` (``l1``).

``tau_hat = scale * s``, stored as :class:`~sparsa.formats.sign_mask.SignMask`.
"""

from collections.abc import Iterable, Mapping
import torch

from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.config import TSWITCH_SPECS, TSwitchConfig
from sparsa.merge.registry import register_method


def keep_by_sign(tau: torch.Tensor, drop_ratio: float) -> torch.Tensor:
    """Bool mask (shape of ``tau``): the top ``1 - drop_ratio`` of positives and of negatives by magnitude."""
    flat = tau.reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=tau.device)
    for side in (flat > 0, flat < 0):
        idx = side.nonzero().squeeze(1)
        k = round((1.0 - drop_ratio) * idx.numel())
        if k:
            keep[idx[flat[idx].abs().topk(k).indices]] = True
    return keep.view(tau.shape)


def tensor_scale(tau: torch.Tensor, keep: torch.Tensor, norm: str) -> float:
    """The one scale of a tensor (see the module docstring); 0 when nothing is kept."""
    nnz = int(keep.sum())
    if nnz == 0:
        return 0.0
    kept = tau[keep].double()
    if norm == "l2":
        return float(kept.norm() / nnz**0.5)
    if norm == "lsq":
        return float(kept.abs().mean())
    return float(tau.double().abs().sum() / nnz)  # l1


def compress_tensor(tau: torch.Tensor, config: TSwitchConfig, name: str = "tensor") -> SignMask:
    """One tensor ``tau`` (1-D or more, fp32) -> its SignMask."""
    keep = keep_by_sign(tau, config.drop_ratio)
    signs = torch.sign(tau) * keep
    return SignMask.from_ternary(signs, tensor_scale(tau, keep, config.scale_norm), encoding=config.encoding,
                                 group_size=config.group_size, where=name)


def compress_task_vector(tau: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                         config: TSwitchConfig = TSwitchConfig()) -> CompressedTaskVector:
    """T-Switch every tensor of a task vector: a mapping name -> fp32 tensor, or ``(name, tensor)``
    pairs (e.g. :func:`~sparsa.merge.task_vector.iter_task_vector`, one tensor in memory at a time)."""
    masks, raw = {}, {}
    for name, t in (tau.items() if isinstance(tau, Mapping) else tau):
        if t.dim() == 0:
            raw[name] = t.float().clone()
        else:
            masks[name] = compress_tensor(t.float(), config, name)
    return CompressedTaskVector(masks, raw)


@register_method("tswitch", reference_url="https://arxiv.org/abs/2412.00054", kind="compressed", params=TSWITCH_SPECS)
def tswitch(task_vector: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], *,
            generator: torch.Generator | None = None, drop_ratio: float = TSwitchConfig.drop_ratio,
            scale_norm: str = TSwitchConfig.scale_norm, encoding: str = TSwitchConfig.encoding,
            group_size: int = TSwitchConfig.group_size) -> CompressedTaskVector:
    """The registered form of :func:`compress_task_vector` (keyword parameters: :class:`TSwitchConfig`'s fields)."""
    return compress_task_vector(task_vector, TSwitchConfig(drop_ratio=drop_ratio, scale_norm=scale_norm,
                                                           encoding=encoding, group_size=group_size))
