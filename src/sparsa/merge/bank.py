"""A base model plus compressed task vectors, switched or mixed on demand.

``weights(w)`` rebuilds ``theta = theta_base + sum_t w_t * scale_t * s_t`` (Auto-Switch mixes
with router weights; T-Switch with an oracle task id is ``w = one_hot(task)``). The ternary
signs are decoded once at construction and held as int8 (1 byte per parameter per task), so a
rebuild is a weighted sum, not a decode.
"""

from collections.abc import Mapping

import torch

from sparsa.errors import SparsaError
from sparsa.merge.task_vector import check_same_tensors
from sparsa.merge.tswitch import CompressedTaskVector


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
        self.signs, self.scales, self.raw = {}, {}, {}
        for task, ctv in tasks.items():
            check_same_tensors(self.base, {**ctv.masks, **ctv.raw}, f"task {task!r}")
            self.signs[task] = {n: m.ternary() for n, m in ctv.masks.items()}
            self.scales[task] = {n: float(m.scale) for n, m in ctv.masks.items()}
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
                    acc += (wt * self.scales[task][name]) * self.signs[task][name]
            out[name] = acc.to(b.dtype)
        return out

    def task(self, name: str) -> dict[str, torch.Tensor]:
        """The weights of one task (T-Switch with the task id known)."""
        return self.weights({name: 1.0})
