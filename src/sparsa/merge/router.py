"""Auto-Switch's router (arXiv 2412.00054, section 3.3): k nearest neighbours over features.

A query set of ``samples_per_task`` samples per task, embedded by the base model, is the
memory; a test sample's task weights are the shares of its ``k`` nearest query samples
(Euclidean, uniform votes) belonging to each task.
"""

import torch

from sparsa.errors import SparsaError


class KNNRouter:
    """Task weights from the ``k`` nearest query-set features.

    Args:
        features: [n, d] fp32 query-set features.
        labels: [n] int64 task index of each query sample, in ``[0, tasks)``.
        tasks: number of tasks.
        k: neighbours voting (clipped to ``n``).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, tasks: int, k: int = 10):
        if features.dim() != 2 or labels.shape != (features.shape[0],) or features.shape[0] == 0:
            raise SparsaError(f"router: features {list(features.shape)} and labels {list(labels.shape)}; "
                              "expected [n, d] and [n] with n >= 1")
        if int(labels.min()) < 0 or int(labels.max()) >= tasks:
            raise SparsaError(f"router: labels must lie in [0, {tasks}), found {int(labels.min())}..{int(labels.max())}")
        self.features, self.labels = features.float(), labels.long()
        self.tasks, self.k = tasks, min(k, features.shape[0])

    def shares(self, x: torch.Tensor) -> torch.Tensor:
        """[b, tasks] share of each sample's ``k`` nearest query samples per task (rows sum to 1).

        Args:
            x: [b, d] features of the samples to route.
        """
        d = torch.cdist(x.float(), self.features)  # [b, n]
        nearest = d.topk(self.k, dim=1, largest=False).indices  # [b, k]
        votes = torch.nn.functional.one_hot(self.labels[nearest], self.tasks).float()  # [b, k, tasks]
        return votes.mean(dim=1)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """[b] the top task of each sample (ties to the lower index)."""
        return self.shares(x).argmax(dim=1)
