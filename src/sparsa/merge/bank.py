"""A base model plus compressed task vectors, switched or mixed on demand.

``weights(w)`` rebuilds ``theta = theta_base + sum_t w_t * tau_hat_t`` (Auto-Switch mixes with
router weights; T-Switch with an oracle task id is ``w = one_hot(task)``). Each tensor's signs
and magnitude codes are decoded once at construction into one int8 per parameter per task,
``s * (code + 1)`` in ``[-L, L]`` (``L`` magnitudes), beside a lookup table
``[-scale[L-1], ..., -scale[0], 0, scale[0], ..., scale[L-1]]``: a rebuild is a table lookup and a
weighted sum, not a decode.
"""

from collections.abc import Mapping

import torch

from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.task_vector import check_same_tensors


def signed_codes(mask: SignMask) -> torch.Tensor:
    """int8 of ``mask.shape``: ``s * (code + 1)`` per entry (0 where dropped)."""
    flat = mask.ternary().reshape(-1)
    flat[mask.nonzero_positions()] *= (mask.magnitude_codes() + 1).to(torch.int8)
    return flat.view(mask.shape)


def lookup_table(mask: SignMask) -> torch.Tensor:
    """fp32 [2L + 1]: the value of each signed code, indexed by ``code + L``."""
    scale = mask.scale.float()
    return torch.cat([-scale.flip(0), scale.new_zeros(1), scale])


class SwitchBank:
    """Base weights and one :class:`CompressedTaskVector` per task.

    Args:
        base: name -> tensor (the base model's state dict).
        tasks: task name -> its compressed task vector, over exactly ``base``'s tensor names.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], tasks: Mapping[str, CompressedTaskVector]):
        if not tasks:
            raise SparsaError("switch bank: no task vectors")
        self.base = dict(base)
        self.names = list(tasks)
        self.codes, self.tables, self.raw = {}, {}, {}
        for task, ctv in tasks.items():
            check_same_tensors(self.base, {**ctv.masks, **ctv.raw}, f"task {task!r}")
            self.codes[task] = {n: signed_codes(m) for n, m in ctv.masks.items()}
            self.tables[task] = {n: lookup_table(m) for n, m in ctv.masks.items()}
            self.raw[task] = dict(ctv.raw)

    def weights(self, w: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """``theta_base + sum_t w[t] * tau_hat_t`` per tensor, in the base dtypes (tasks absent from
        ``w`` weigh 0)."""
        unknown = sorted(set(w) - set(self.names))
        if unknown:
            raise SparsaError(f"switch bank: unknown task {unknown[0]!r}; known: {', '.join(self.names)}")
        out = {}
        for name, b in self.base.items():
            acc = b.float().clone()
            for task, wt in w.items():
                if wt == 0:
                    continue
                if name in self.raw[task]:
                    acc += wt * self.raw[task][name]
                else:
                    table = self.tables[task][name]
                    acc += wt * table[self.codes[task][name].long() + table.numel() // 2]
            out[name] = acc.to(b.dtype)
        return out

    def task(self, name: str) -> dict[str, torch.Tensor]:
        """The weights of one task (T-Switch with the task id known)."""
        return self.weights({name: 1.0})
