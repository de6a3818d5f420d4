"""The merging methods, one module each, registered on import: Task Arithmetic, TIES, DARE,
EMR-Merging, TALL-masks (static and per-task), T-Switch (compressed; :mod:`.tswitch`) and FlexSwitch
(trained on each task's samples; :mod:`.flexswitch`).

A task vector is ``dict[str, Tensor]`` with ``tau_t = theta_finetuned - theta_base``; every method takes
``task_vectors: dict[task, task vector]`` (same tensor names and shapes in every task) and keyword parameters.
``static`` methods return one merged ``tau`` (add it to ``theta_base``); ``per_task`` methods return one
reconstructed ``tau_hat_t`` per task. All math is float32, vectorised per tensor over a ``[T, *shape]`` stack,
deterministic, and never modifies the inputs.

0-d tensors (scalars) are tiny and carry no sparsity to exploit: the static TIES and DARE merge them as the plain
mean ``(1/T) sum_t tau_t``, the per-task methods return ``tau_t`` itself (Task Arithmetic has no special case: it is
elementwise already). EMR's rescalers are computed over the tensors with at least one dimension.
"""

# registered in this order, the order benchmarks list them in (static, per-task, compressed, trained)
from sparsa.merge.methods import task_arithmetic, ties, dare, emr, tall_masks, tswitch, flexswitch  # noqa: F401,I001
