"""Gradual block pruning with recovery: prune an encoder while distilling its dense embeddings.

One-shot pruning at 70-90% wrecks a small encoder; the CPU accelerator paper's sparse BERTs
were pruned gradually while training. Here the student (the model being pruned) learns to
reproduce the dense teacher's sentence embeddings on calibration text:

* every ``update_every`` steps, each selected linear keeps the ``1 - s_t`` share of its ``R x C``
  blocks of largest L2 norm, with ``s_t = s * (1 - (1 - t / T)^3)`` rising from 0 to the target
  ``s`` over the first ``T = ramp * steps`` steps (the cubic schedule of Zhu & Gupta, 2017);
* each step minimises ``1 - cos(student(x), teacher(x))`` with AdamW, and the masks are applied
  again after the update, so pruned blocks stay exactly zero;
* at the end every selected linear becomes a ``SparseLinear`` holding a ``BlockSparse`` weight.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsa.compress.magnitude import prune_blocks
from sparsa.errors import SparsaError
from sparsa.formats.block_sparse import BlockSparse, check_block
from sparsa.nn.sparse_linear import SparseLinear
from sparsa.nn.surgery import FilterFn, decoder_linears, set_submodule, target_linears

EmbedFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, ids [B, T]) -> [B, H]


@dataclass(frozen=True)
class RecoverConfig:
    """Gradual block pruning with embedding distillation.

    Attributes:
        sparsity: final share of blocks removed from each selected linear, in [0, 1).
        block: (R, C) block shape; (16, 1) and (1, 16) suit the fp32 CPU kernel (16x1 the faster), (4, 1) the int8 one.
        steps: optimizer steps; ramp: share of them over which the sparsity rises.
        update_every: steps between mask updates while the sparsity rises.
        lr: AdamW learning rate; batch_size: calibration windows per step.
        seed: batch order.
    """

    sparsity: float
    block: tuple[int, int] = (16, 1)
    steps: int = 300
    ramp: float = 0.7
    update_every: int = 10
    lr: float = 1e-3  # MiniLM, 90% 1x16, 60 steps: held-out cosine 0.22 at 5e-5, 0.33 at 3e-4, 0.40 at 1e-3
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise SparsaError(f"--sparsity {self.sparsity} must be in [0, 1)")
        if self.steps < 1:
            raise SparsaError(f"--recover-steps {self.steps}: must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SparsaError(f"--recover-lr {self.lr}: must be a finite number > 0 (default {RecoverConfig.lr:g})")
        if not 0.0 < self.ramp <= 1.0 or self.update_every < 1 or self.batch_size < 1:
            raise SparsaError("recovery needs 0 < ramp <= 1, update_every >= 1 and batch_size >= 1")

    def sparsity_at(self, step: int) -> float:
        """The cubic schedule: 0 at step 0, ``sparsity`` from ``ramp * steps`` on."""
        ramp_steps = max(1, round(self.ramp * self.steps))
        done = min(1.0, step / ramp_steps)
        return self.sparsity * (1.0 - (1.0 - done) ** 3)


@dataclass
class RecoverSummary:
    """What recovery did: the loss (1 - cosine) of each step and the blocks kept per layer."""

    losses: list[float] = field(default_factory=list)
    layers: int = 0
    kept_blocks: int = 0
    total_blocks: int = 0


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between matching rows of [B, H] embeddings."""
    return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


def recover_prune_(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, embed_fn: EmbedFn,
                   config: RecoverConfig, *, filter_fn: FilterFn = decoder_linears,
                   progress: bool = True) -> RecoverSummary:
    """Prune ``student`` in place to ``config.sparsity`` in blocks while it distils ``teacher``.

    Args:
        student: the model to prune (trained, then its selected linears replaced).
        teacher: the dense model whose embeddings are the targets (not changed).
        windows: [n, T] calibration token ids.
        embed_fn: ``(model, ids [B, T]) -> [B, H]`` sentence embeddings, differentiable.
    """
    layers = {fqn: m for fqn, m in target_linears(student, filter_fn)}
    if not layers:
        raise SparsaError("recovery found no linear layer to prune")
    for fqn, m in layers.items():
        check_block(tuple(m.weight.shape), config.block, fqn)
    g = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    masks: dict[str, torch.Tensor] = {}
    summary = RecoverSummary()
    teacher.eval()
    student.train()
    bar = tqdm(range(config.steps), desc="recover", disable=not progress, unit="step")
    for step in bar:
        if step % config.update_every == 0 and step <= config.ramp * config.steps + config.update_every:
            s = config.sparsity_at(step)
            masks = {fqn: prune_blocks(m.weight.detach(), config.block, s) for fqn, m in layers.items()}
            apply_masks(layers, masks)
        batch = windows[torch.randint(0, windows.shape[0], (config.batch_size,), generator=g)]
        with torch.no_grad():
            target = embed_fn(teacher, batch)
        loss = cosine_loss(embed_fn(student, batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        apply_masks(layers, masks)
        summary.losses.append(loss.item())
        bar.set_postfix(loss=f"{summary.losses[-1]:.2e}", sparsity=f"{config.sparsity_at(step):.2f}")
    masks = {fqn: prune_blocks(m.weight.detach(), config.block, config.sparsity) for fqn, m in layers.items()}
    apply_masks(layers, masks)
    student.eval()
    replaced: dict[int, SparseLinear] = {}
    for fqn, m in target_linears(student, filter_fn):
        if id(m) not in replaced:
            fmt = BlockSparse.from_dense(m.weight.detach().float(), block=config.block, where=fqn)
            replaced[id(m)] = SparseLinear(fmt, None if m.bias is None else m.bias.detach())
            summary.layers += 1
            summary.kept_blocks += fmt.col.numel()
            summary.total_blocks += fmt.grid[0] * fmt.grid[1]
        set_submodule(student, fqn, replaced[id(m)])
    return summary


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Zero every pruned weight (masks: fqn -> [out, in] bool, True where kept)."""
    for fqn, mask in masks.items():
        layers[fqn].weight.mul_(mask)
