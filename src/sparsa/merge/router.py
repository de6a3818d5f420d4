"""Auto-Switch's routers: task weights for a batch from the base model's features.

A query set of ``samples_per_task`` samples per task, embedded by the base model, is the memory.

* :class:`KNNRouter` (arXiv 2412.00054, section 3.3): a sample's task weights are the shares of
  its ``k`` nearest query samples (Euclidean, uniform votes) per task; a batch's are their mean.
* :class:`CentroidRouter` (ours): the batch's mean feature picks the task whose mean query feature
  is nearest. Averaging over a batch drawn from one task cancels the content of single samples and
  keeps what the task's inputs share, which single-sample neighbours miss (a noisy image's nearest
  neighbours are clean ones).
"""

import torch

from sparsa.errors import SparsaError


def check_query_set(features: torch.Tensor, labels: torch.Tensor, tasks: int) -> None:
    if features.dim() != 2 or labels.shape != (features.shape[0],) or features.shape[0] == 0:
        raise SparsaError(f"router: features {list(features.shape)} and labels {list(labels.shape)}; "
                          "expected [n, d] and [n] with n >= 1")
    if int(labels.min()) < 0 or int(labels.max()) >= tasks:
        raise SparsaError(f"router: labels must lie in [0, {tasks}), found {int(labels.min())}..{int(labels.max())}")


class KNNRouter:
    """Task weights from the ``k`` nearest query-set features.

    Args:
        features: [n, d] fp32 query-set features.
        labels: [n] int64 task index of each query sample, in ``[0, tasks)``.
        tasks: number of tasks.
        k: neighbours voting (clipped to ``n``).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, tasks: int, k: int = 10):
        check_query_set(features, labels, tasks)
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

    @property
    def nbytes(self) -> int:
        """Bytes the router keeps: fp32 query features and int64 labels."""
        return self.features.numel() * 4 + self.labels.numel() * 8

    def batch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[tasks] the batch's mean shares (the paper's weights, summing to 1)."""
        return self.shares(x).mean(dim=0)


class CentroidRouter:
    """The task whose mean query feature is nearest to the batch's mean feature.

    Args: as :class:`KNNRouter`, without ``k``.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, tasks: int):
        check_query_set(features, labels, tasks)
        counts = torch.bincount(labels, minlength=tasks)
        if bool((counts == 0).any()):
            raise SparsaError(f"router: task {int((counts == 0).nonzero()[0])} has no query samples")
        sums = torch.zeros(tasks, features.shape[1]).index_add_(0, labels.long(), features.float())
        self.centroids = sums / counts[:, None]  # [tasks, d]
        self.tasks = tasks

    @property
    def nbytes(self) -> int:
        """Bytes the router keeps: fp32 centroids."""
        return self.centroids.numel() * 4

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """[b] the task of the nearest centroid to each single sample."""
        return torch.cdist(x.float(), self.centroids).argmin(dim=1)

    def batch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[tasks] one-hot: the task of the centroid nearest to the batch's mean feature."""
        task = self.route(x.float().mean(dim=0, keepdim=True))[0]
        return torch.nn.functional.one_hot(task, self.tasks).float()
