"""Auto-Switch as a side branch: task vectors applied in the forward pass, base weights untouched.

A switch bank (:class:`~sparsa.merge.bank.SwitchBank`) rebuilds every weight when the task
weights change: one pass over all parameters per batch. Here each ``nn.Linear`` whose weight has
compressed task vectors becomes a :class:`SwitchedLinear`:

    y = x W_base^T + b_base + sum_t w_t (x D_t^T + d_t)

with ``D_t`` the task's stored weight delta as a sparse CSR matrix (fp32 values
``sign * scale[code]``, only the kept entries) and ``d_t`` its bias delta (dense; biases are
small). Changing the task weights costs nothing and no weight is copied; each call pays one
sparse product per task of nonzero weight. Every other tensor (norms, embeddings kept as
parameters) is small and is rebuilt in place by :meth:`Switch.set` (a
:class:`~sparsa.merge.bank.SwitchBank` over those tensors alone).
"""

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.bank import SwitchBank
from sparsa.nn.surgery import set_submodule


def sparse_delta(mask: SignMask) -> torch.Tensor:
    """[out, in] fp32 sparse CSR of a 2-D SignMask's ``to_dense()`` (only its nonzeros stored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "sparse CSR support is in beta"
        return mask.to_dense(torch.float32).to_sparse_csr()


class SwitchedLinear(nn.Module):
    """``linear`` plus weighted sparse task deltas (see the module docstring).

    Args:
        linear: the base layer (kept as is).
        weight_deltas: task -> SignMask of the weight's task vector, shape ``[out, in]``.
        bias_deltas: task -> fp32 ``[out]`` bias task vector (absent tasks: none).
    """

    def __init__(self, linear: nn.Linear, weight_deltas: Mapping[str, SignMask],
                 bias_deltas: Mapping[str, torch.Tensor]):
        super().__init__()
        self.linear = linear
        self.deltas = {t: sparse_delta(m) for t, m in weight_deltas.items()}
        self.bias_deltas = dict(bias_deltas)
        self.task_weights: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        y = self.linear(x)
        flat = x.reshape(-1, x.shape[-1]).float()
        for task, w in self.task_weights.items():
            if w == 0 or task not in self.deltas:
                continue
            delta = (self.deltas[task] @ flat.T).T.reshape(y.shape)
            if task in self.bias_deltas:
                delta = delta + self.bias_deltas[task]
            y = y + (w * delta).to(y.dtype)
        return y


class Switch:
    """A model whose task vectors are switched by weights, not by rebuilding its linear layers.

    Args:
        model: the base model (modified in place: its linear layers with task vectors are wrapped).
        vectors: task -> compressed task vector over the model's state-dict names.
    """

    def __init__(self, model: nn.Module, vectors: Mapping[str, CompressedTaskVector]):
        if not vectors:
            raise SparsaError("switch: no task vectors")
        self.model, self.tasks = model, list(vectors)
        state = model.state_dict()
        for task, v in vectors.items():
            names = set(v.masks) | set(v.raw)
            if names != set(state):
                missing = sorted(set(state) ^ names)[0]
                raise SparsaError(f"switch: task {task!r} and the model differ at tensor {missing!r}")
        self.layers: list[SwitchedLinear] = []
        linear_names = set()
        for fqn, module in list(model.named_modules()):
            if isinstance(module, nn.Linear):
                w, b = f"{fqn}.weight", f"{fqn}.bias"
                layer = SwitchedLinear(module, {t: v.masks[w] for t, v in vectors.items()},
                                       {t: v.tensor(b) for t, v in vectors.items()} if module.bias is not None else {})
                set_submodule(model, fqn, layer)
                self.layers.append(layer)
                linear_names |= {w, b}
        rest = {n: state[n].detach().clone() for n in state if n not in linear_names}
        self.rest = SwitchBank(rest, {t: CompressedTaskVector({n: m for n, m in v.masks.items() if n in rest},
                                                              {n: r for n, r in v.raw.items() if n in rest})
                                      for t, v in vectors.items()})

    @torch.no_grad()
    def set(self, weights: Mapping[str, float]) -> None:
        """Use ``theta_base + sum_t weights[t] * tau_hat_t`` (tasks absent weigh 0)."""
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise SparsaError(f"switch: unknown task {unknown[0]!r}; known: {', '.join(self.tasks)}")
        rebuilt = self.rest.weights(weights)
        for layer in self.layers:
            layer.task_weights = dict(weights)
        tensors = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        for name, value in rebuilt.items():  # outside the linear layers, names are unchanged
            tensors[name].copy_(value)
