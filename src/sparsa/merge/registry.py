"""Name -> merge method table, filled by ``@register_method``.

A merge method takes ``task_vectors: dict[task, dict[tensor name, Tensor]]`` (each task vector
``tau_t = theta_finetuned - theta_base``) plus keyword parameters and returns either

* ``kind="static"``: one merged task vector ``dict[str, Tensor]`` added to ``theta_base`` for every task, or
* ``kind="per_task"``: ``dict[task, dict[str, Tensor]]``, one reconstructed task vector per task (the task id is
  needed at inference to pick it);

or, for ``kind="compressed"``, takes one task's vector (``(name, tensor)`` pairs, one tensor in
memory at a time) and returns its :class:`~sparsa.formats.task_vector.CompressedTaskVector`: a
switch bank holds one per task. ``kind="trained"`` is compressed too, but learns from the task's
samples: ``fn(task_vector, base, loss, *, generator=None, **params)`` takes the task's whole vector
(a mapping), the base tensors and ``loss(weights, step)``, the task's loss on its batch ``step``;
in a merge YAML every model names its samples with the parameters of :data:`TRAINING_DATA`. ``sparsa merge`` runs the
static methods (a merged model) and the compressed and trained ones (a switch bank);
:func:`~sparsa.merge.run.merge_models` dispatches on the kind.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparsa.errors import SparsaError
from sparsa.merge.params import Param
from sparsa.registry import Registry

KINDS = ("static", "per_task", "compressed", "trained")
BANK_KINDS = ("compressed", "trained")  # the kinds whose merge writes a switch bank
# a trained method's samples, per model or global in a merge YAML: the file (:mod:`sparsa.nn.task_data`)
# and the windows per training step; the pipeline builds the loss from them
TRAINING_DATA = {"data": Param(str), "batch_size": Param(int, 1)}
TRAINING_DEFAULTS = {"batch_size": 8}


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method.

    Attributes:
        name: Registry name (``"ties"``).
        fn: The plain function ``fn(task_vectors, *, generator=None, **params)`` (compressed: one task's
            vector; trained: one task's vector, the base and the loss, positionally).
        reference_url: Where the method is described (paper).
        kind: ``"static"``, ``"per_task"`` or ``"compressed"`` (see the module docstring).
        params: Parameter name -> default, read from ``fn``'s keyword-only parameters (``generator`` excluded).
        specs: Parameter name -> its declared type and range.
        storage: ``(numel_per_task, tasks) -> bits`` the method stores to serve the tasks.
    """

    name: str
    fn: Callable[..., Any]
    reference_url: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, Param] = field(default_factory=dict)
    storage: Callable[[int, int], int] | None = None

    def __call__(self, task_vectors, *context, generator=None, **params):
        """Run ``fn``; a SparsaError names any parameter the method does not take or a value out of its range.
        ``context``: a trained method's base tensors and loss."""
        for key, value in params.items():
            if key not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                raise SparsaError(f"merge method {self.name!r} has no parameter {key!r}; known: {known}")
            self.specs[key].check(key, value, f"merge method {self.name!r}")
        return self.fn(task_vectors, *context, generator=generator, **params)


METHODS: Registry = Registry("merge method")


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters of ``fn`` with their defaults, ``generator`` left out."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "generator":
            out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def register_method(name: str, *, reference_url: str, kind: str, params: dict[str, Param] | None = None,
                    storage: Callable[[int, int], int] | None = None):
    """Function decorator: file ``fn`` under ``name``; the function itself is returned unchanged.

    Args:
        name: Registry name; registering it twice raises RuntimeError.
        reference_url: Paper or page that defines the method.
        kind: ``"static"`` (one merged task vector), ``"per_task"`` (one reconstruction per task),
            ``"compressed"`` (one compressed task vector per task, from that task's vector alone) or
            ``"trained"`` (one per task, learnt on the task's samples: ``fn`` also takes the base and the loss).
        params: The type and range of each keyword parameter of ``fn``; every one must be declared
            (RuntimeError otherwise) and its default must pass.
        storage: ``(numel_per_task, tasks) -> bits`` stored to serve ``tasks`` tasks (:func:`storage_bits`).
    """
    if kind not in KINDS:
        raise ValueError(f"merge method {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    specs = dict(params or {})

    def decorate(fn):
        defaults = _defaults(fn)
        if set(specs) != set(defaults):
            raise RuntimeError(f"merge method {name!r}: params= declares {sorted(specs)}, "
                               f"its keyword parameters are {sorted(defaults)}")
        for key, default in defaults.items():
            specs[key].check(key, default, f"merge method {name!r} default")
        METHODS.add(name, MergeMethod(name=name, fn=fn, reference_url=reference_url, kind=kind, params=defaults,
                                      specs=specs, storage=storage))
        return fn

    return decorate


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a SparsaError lists the known ones otherwise."""
    return METHODS.lookup(name)


def storage_bits(name: str, numel_per_task: int, tasks: int) -> int:
    """Bits the method ``name`` stores to serve ``tasks`` tasks of ``numel_per_task`` parameters each
    (each method's ``storage`` formula; e.g. the static merges keep one fp32 vector, ``32 * numel``).

    Raises:
        SparsaError: an unknown method, one registered without a formula, or counts out of range.
    """
    method = get_method(name)
    if numel_per_task < 0 or tasks < 1:
        raise SparsaError(f"storage_bits: need numel_per_task >= 0 and tasks >= 1, got {numel_per_task}, {tasks}")
    if method.storage is None:
        known = ", ".join(sorted(n for n, m in METHODS.items() if m.storage is not None))
        raise SparsaError(f"storage_bits: no formula for merge method {name!r}; known: {known}")
    return method.storage(numel_per_task, tasks)


def model_methods() -> dict[str, MergeMethod]:
    """The methods ``sparsa merge`` runs on models: the static ones (a merged model, tensor by tensor)
    and the compressed and trained ones (a switch bank, task by task)."""
    return {name: m for name, m in METHODS.items() if m.kind in ("static", *BANK_KINDS)}
