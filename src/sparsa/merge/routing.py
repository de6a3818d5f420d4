"""Auto-Switch: a router over the base model's features in front of a switch bank.

A batch's features (the base model's, [b, d]) go to the router, which weighs the tasks; the bank
rebuilds ``theta_base + sum_t w_t * tau_hat_t`` (:class:`~sparsa.merge.bank.SwitchBank`). A merge
YAML's ``router:`` block (:class:`~sparsa.merge.config.RouterSpec`) builds the router from each
task's query samples (:func:`build_router`); ``sparsa merge`` stores its arrays beside the bank and
``sparsa merge-eval`` rebuilds it (:func:`load_router`) without retraining.
"""

from collections.abc import Mapping

import torch

from sparsa.errors import SparsaError
from sparsa.merge.bank import SwitchBank
from sparsa.merge.config import RouterSpec
from sparsa.merge.router import CentroidRouter, KNNRouter, MetricKNNRouter

ROUTERS = {"knn": KNNRouter, "metric_knn": MetricKNNRouter, "centroid": CentroidRouter}
Router = KNNRouter | MetricKNNRouter | CentroidRouter


def build_router(spec: RouterSpec, features: Mapping[str, torch.Tensor]) -> Router:
    """The router ``spec`` names over ``features``: task -> [n_t, d] query features, in the bank's task
    order (the labels are the positions in it).

    Raises:
        SparsaError: the tasks' features differ in width.
    """
    widths = {t: f.shape[1] for t, f in features.items()}
    if len(set(widths.values())) != 1:
        raise SparsaError(f"router: the query sets' features differ in width ({widths})")
    x = torch.cat([f.float() for f in features.values()])
    labels = torch.arange(len(features)).repeat_interleave(torch.tensor([len(f) for f in features.values()]))
    c = spec.config
    if spec.kind == "knn":
        return KNNRouter(x, labels, len(features), c.k, spec.batch_mode)
    if spec.kind == "metric_knn":
        return MetricKNNRouter(x, labels, len(features), c.k, spec.batch_mode, c.rank, c.metric_steps, seed=spec.seed)
    return CentroidRouter(x, labels, len(features))


def load_router(meta: dict, arrays: dict[str, torch.Tensor], tasks: int) -> Router:
    """A stored router: ``meta`` as :meth:`RouterSpec.to_dict` wrote it, ``arrays`` its tensors.

    Raises:
        SparsaError: an unknown kind, a missing array, or arrays that do not fit together.
    """
    kind = meta.get("kind")
    if kind not in ROUTERS:
        raise SparsaError(f"router: kind {kind!r} is not one of {', '.join(ROUTERS)}")
    missing = sorted(set(ROUTERS[kind].ARRAYS) - set(arrays))
    if missing:
        raise SparsaError(f"router ({kind}): missing arrays {missing}")
    bad = [n for n, a in arrays.items() if a.is_floating_point() and not bool(torch.isfinite(a).all())]
    if bad:
        raise SparsaError(f"router ({kind}): array {bad[0]!r} has a non-finite entry")
    return ROUTERS[kind].from_arrays(arrays, tasks, int(meta.get("k", 1)), meta.get("batch_mode", "mean"))


class AutoSwitch:
    """A router and a switch bank: the weights for a batch, from its features alone.

    Args:
        router: any of :data:`ROUTERS`, its labels the positions of ``bank.names``.
        bank: the base and one compressed task vector per task.
    """

    def __init__(self, router: Router, bank: SwitchBank):
        if router.tasks != len(bank.names):
            raise SparsaError(f"auto-switch: the router weighs {router.tasks} tasks, the bank holds "
                              f"{len(bank.names)}")
        self.router, self.bank = router, bank

    def task_weights(self, features: torch.Tensor) -> dict[str, float]:
        """Task name -> weight for a batch of base-model features [b, d]."""
        return {t: float(w) for t, w in zip(self.bank.names, self.router.batch_weights(features))}

    def weights(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rebuilt state dict for a batch of base-model features [b, d]."""
        return self.bank.weights(self.task_weights(features))

    def route(self, features: torch.Tensor) -> list[str]:
        """Each single sample's task."""
        return [self.bank.names[int(i)] for i in self.router.route(features)]
