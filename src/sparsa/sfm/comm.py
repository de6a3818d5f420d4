"""Sums across processes for point-partitioned bundle adjustment.

Each process owns a share of the points and every observation of them; camera-side quantities
(gradient, reduced-system products, damping, preconditioner blocks) are partial sums that one
all-reduce completes, and the costs are scalars summed the same way (BSMC / MegBA decomposition:
one all-reduce of a camera-sized vector per CG iteration). :class:`LocalComm` is the one-process
identity; :class:`TorchComm` uses ``torch.distributed`` (gloo on CPU, NCCL on CUDA).
"""

import torch


class LocalComm:
    """One process: every sum is already complete."""

    rank, world_size = 0, 1

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over processes in place; returns it."""
        return x

    def sum(self, value: float) -> float:
        return value

    def max(self, value: float) -> float:
        return value

    def all_gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return x

    def close(self) -> None:
        """Release the processes' connections (nothing to release for one process)."""


class TorchComm(LocalComm):
    """``torch.distributed`` with an initialized default process group."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        if self.nccl and not x.is_cuda:  # NCCL reduces device tensors only
            x.copy_(self.sum_(x.cuda()))
        else:
            self.dist.all_reduce(x)
        return x

    @property
    def nccl(self) -> bool:
        return self.dist.get_backend() == "nccl"

    def _scalar(self, value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device="cuda" if self.nccl else "cpu")
        self.dist.all_reduce(t, op=op)
        return float(t)

    def all_gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every process's ``x`` [sizes[rank], ...] in rank order (on every process)."""
        pad = max(sizes)
        local = x.new_zeros(pad, *x.shape[1:])
        local[: x.shape[0]] = x
        if self.nccl:
            local = local.cuda()
        parts = [torch.empty_like(local) for _ in sizes]
        self.dist.all_gather(parts, local)
        return torch.cat([p[:n].to(x.device) for p, n in zip(parts, sizes)])

    def sum(self, value: float) -> float:
        return self._scalar(value, self.dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        return self._scalar(value, self.dist.ReduceOp.MAX)

    def close(self) -> None:
        """Wait for every process, then destroy the process group. Exiting with the group alive let
        gloo's threads die mid-teardown: 2 runs in 10 aborted a rank with "terminate called without
        an active exception"; with this, 12 runs in 12 passed."""
        self.dist.barrier()
        self.dist.destroy_process_group()
