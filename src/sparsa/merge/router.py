"""Auto-Switch's routers: task weights for a batch from the base model's features.

A query set of ``samples_per_task`` samples per task, embedded by the base model, is the memory.

* :class:`KNNRouter` (arXiv 2412.00054, section 3.3): a sample's task weights are the shares of
  its ``k`` nearest query samples (Euclidean, uniform votes) per task; a batch's are their mean.
* :class:`MetricKNNRouter` (Auto-FlexSwitch's learnable low-rank metric, arXiv 2604.28109; the
  training is ours): the KNN router in ``z = L (x - mu) / sigma``, ``L`` [rank, d] learned on the
  query set by neighbourhood components analysis (NCA: maximize each query sample's soft-max
  probability mass on same-task neighbours, itself left out). It keeps ``z`` of the query set
  (rank numbers per sample instead of d), ``L``, ``mu`` and ``sigma``.
* :class:`CentroidRouter` (ours): the batch's mean feature picks the task whose mean query feature
  is nearest. Averaging over a batch drawn from one task cancels the content of single samples and
  keeps what the task's inputs share, which single-sample neighbours miss (a noisy image's nearest
  neighbours are clean ones).
"""

import torch

from sparsa.errors import SparsaError

BATCH_MODES = ("mean", "vote")


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
        batch_mode: ``mean`` (a batch's weights are its samples' mean shares, the paper's) or
            ``vote`` (all weight on the task with the largest mean share).
    """

    ARRAYS = ("features", "labels")  # what :meth:`arrays` stores

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, tasks: int, k: int = 10,
                 batch_mode: str = "mean"):
        check_query_set(features, labels, tasks)
        if batch_mode not in BATCH_MODES:
            raise SparsaError(f"router: batch_mode {batch_mode!r} is not one of {', '.join(BATCH_MODES)}")
        self.features, self.labels = features.float(), labels.long()
        self.tasks, self.k, self.batch_mode = tasks, min(k, features.shape[0]), batch_mode

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
        """[tasks] the batch's mean shares (the paper's weights, summing to 1), or for ``vote`` the
        one-hot of their largest (ties to the lower index)."""
        mean = self.shares(x).mean(dim=0)
        if self.batch_mode == "mean":
            return mean
        return torch.nn.functional.one_hot(mean.argmax(), self.tasks).float()

    def arrays(self) -> dict[str, torch.Tensor]:
        """What the router keeps, to store (:meth:`from_arrays` rebuilds it)."""
        return {"features": self.features, "labels": self.labels}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], tasks: int, k: int, batch_mode: str) -> "KNNRouter":
        return cls(arrays["features"], arrays["labels"], tasks, k, batch_mode)


def nca_projection(features: torch.Tensor, labels: torch.Tensor, rank: int, steps: int, lr: float,
                   seed: int) -> torch.Tensor:
    """[rank, d] ``L`` minimizing NCA's loss ``-mean_i log sum_{j != i, y_j = y_i} p_ij`` with
    ``p_ij = softmax_j(-||L x_i - L x_j||^2)`` over standardized ``features`` [n, d] (Adam, ``steps``
    full-batch steps from a seeded Gaussian start scaled by ``1 / sqrt(d)``)."""
    n, d = features.shape
    g = torch.Generator().manual_seed(seed)
    L = torch.nn.Parameter(torch.randn(rank, d, generator=g) / d**0.5)
    opt = torch.optim.Adam([L], lr=lr)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    for _ in range(steps):
        z = features @ L.T
        logits = -(torch.cdist(z, z) ** 2).masked_fill(eye, float("inf"))
        p = torch.softmax(logits, dim=1)
        loss = -torch.log((p * same).sum(dim=1) + 1e-12).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return L.detach()


class MetricKNNRouter:
    """:class:`KNNRouter` in a learned low-rank metric (see the module docstring).

    Args:
        features, labels, tasks, k, batch_mode: as :class:`KNNRouter`.
        rank: rows of ``L``.
        steps, lr, seed: NCA's training.
    """

    ARRAYS = ("features", "labels", "L", "mu", "sigma")

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, tasks: int, k: int = 10,
                 batch_mode: str = "mean", rank: int = 8, steps: int = 300, lr: float = 1e-2, seed: int = 0):
        check_query_set(features, labels, tasks)
        if rank < 1:
            raise SparsaError(f"router: rank={rank} must be at least 1")
        with torch.inference_mode(False), torch.enable_grad():  # trains even when called under inference mode
            x = features.float().clone()
            self.mu, self.sigma = x.mean(dim=0), x.std(dim=0, correction=0) + 1e-6
            self.L = nca_projection((x - self.mu) / self.sigma, labels.long().clone(), rank, steps, lr, seed)
        self.knn = KNNRouter(self.project(x), labels, tasks, k, batch_mode)
        self.tasks = tasks

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[b, d] features -> [b, rank]."""
        return ((x.float() - self.mu) / self.sigma) @ self.L.T

    @property
    def nbytes(self) -> int:
        """Bytes the router keeps: the KNN memory in ``z``, ``L``, ``mu`` and ``sigma`` (fp32)."""
        return self.knn.nbytes + 4 * (self.L.numel() + self.mu.numel() + self.sigma.numel())

    def shares(self, x: torch.Tensor) -> torch.Tensor:
        return self.knn.shares(self.project(x))

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.knn.route(self.project(x))

    def batch_weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.knn.batch_weights(self.project(x))

    def arrays(self) -> dict[str, torch.Tensor]:
        """What the router keeps (the query set in ``z``, ``L``, ``mu``, ``sigma``), to store."""
        return {**self.knn.arrays(), "L": self.L, "mu": self.mu, "sigma": self.sigma}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], tasks: int, k: int, batch_mode: str) -> "MetricKNNRouter":
        """The stored router, not retrained; shapes checked against each other."""
        L, mu, sigma = arrays["L"].float(), arrays["mu"].float(), arrays["sigma"].float()
        knn = KNNRouter(arrays["features"], arrays["labels"], tasks, k, batch_mode)
        if L.dim() != 2 or mu.shape != (L.shape[1],) or sigma.shape != mu.shape or knn.features.shape[1] != L.shape[0]:
            raise SparsaError(f"router: L {list(L.shape)}, mu {list(mu.shape)}, sigma {list(sigma.shape)} and "
                              f"features {list(knn.features.shape)} do not fit together")
        router = cls.__new__(cls)
        router.L, router.mu, router.sigma, router.knn, router.tasks = L, mu, sigma, knn, tasks
        return router


class CentroidRouter:
    """The task whose mean query feature is nearest to the batch's mean feature.

    Args: as :class:`KNNRouter`, without ``k``.
    """

    ARRAYS = ("centroids",)

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

    def arrays(self) -> dict[str, torch.Tensor]:
        """What the router keeps (the centroids), to store."""
        return {"centroids": self.centroids}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], tasks: int, k: int = 0,
                    batch_mode: str = "mean") -> "CentroidRouter":
        """The stored centroids, one per task (``k`` and ``batch_mode`` do not apply)."""
        centroids = arrays["centroids"].float()
        if centroids.dim() != 2 or centroids.shape[0] != tasks:
            raise SparsaError(f"router: centroids {list(centroids.shape)}; expected [{tasks}, d]")
        return cls(centroids, torch.arange(tasks), tasks)
