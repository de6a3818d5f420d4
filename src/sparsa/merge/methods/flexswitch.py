"""FlexSwitch: one task vector compressed to a byte budget, with learned row gates (ours).

Auto-FlexSwitch (arXiv 2604.28109) names three parts, learned sparsity, bit-width selection and a
per-tensor storage choice, and publishes no code; this is our design of them. It stores each
tensor as a :class:`~sparsa.formats.sign_mask.SignMask`: T-Switch's mask and signs, plus
``b - 1`` bits per kept entry indexing the tensor's table of ``2**(b - 1)`` magnitudes
(``b = 1``: one magnitude, T-Switch's form), the mask's positions in whichever of the bitmap,
group and delta-index encodings is smallest for that tensor.

1. **Allocation** (bit-width selection). Every tensor gets each candidate of ``keep_ratios`` x
   ``bits``: T-Switch's mask (top ``keep`` of the positive and of the negative entries by
   magnitude), a table fit to the kept magnitudes by Lloyd's 1-D k-means, codes to the nearest
   entry; its cost is the exact bytes of its SignMask, its distortion ``sum (tau - tau_hat)^2``.
   (Weighting the squares by the diagonal Fisher of the task loss at the fine-tuned weights did
   worse on the quick digits suite, 0.925 normalized against 0.984 at 0.6 bits and 200 gate
   steps, measured before stage 2 saw dropped tensors as dropped: at a fine-tuned optimum the
   squared batch gradients are mostly noise.) A Lagrange
   multiplier ``lam`` (bisection) picks, per tensor, ``argmin distortion + lam * bytes`` so that
   the whole vector fits the budget.
2. **Learned gates**. Each row of a tensor (index along dim 0; a 1-D tensor is one row) keeps the
   entries with ``|tau| >= t * exp(g_row)``, ``t`` the tensor's allocated threshold (the
   allocated count's magnitude). The row gates ``g`` and the magnitude tables are trained with
   Adam on the task's loss; the mask is hard in the forward pass and ``sigmoid((|tau| - thr) /
   (temperature * t))`` in the backward pass (straight-through). A penalty ``rate_weight *
   relu(cost / cost_0 - 1)`` keeps the soft count of kept entries, each weighed by its tensor's
   bytes per entry, from growing past its start. Codes stay those of the allocation's table.
3. **Fit**. The hard masks are encoded; if the exact bytes exceed the budget, every threshold is
   multiplied by one common factor (bisection) until they fit.

``loss(weights, step)``: the task's own loss on its batch number ``step`` for a whole state dict
``weights``, differentiable in the weights. FlexSwitch never sees the data itself. It is registered
as the ``trained`` merge method ``flexswitch``; ``sparsa merge`` builds the loss from each model's
``data`` samples (:mod:`sparsa.nn.task_data`).
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.config import FLEXSWITCH_SPECS, FlexSwitchConfig
from sparsa.merge.methods.tswitch import keep_by_sign
from sparsa.merge.registry import register_method

LossFn = Callable[[dict[str, torch.Tensor], int], torch.Tensor]


@dataclass(frozen=True)
class Choice:
    """One tensor's candidate: keep ratio, bits per kept entry, its exact bytes, its distortion,
    its kept count and its magnitude table [2**(bits - 1)] (None where no table was fit)."""

    keep: float
    bits: int
    nbytes: int
    distortion: float
    nnz: int
    table: torch.Tensor | None = None


def lloyd_table(magnitudes: torch.Tensor, levels: int, iters: int) -> torch.Tensor:
    """fp32 [levels], increasing: 1-D k-means of ``magnitudes`` [k] started at the ``(j + 1/2) / levels``
    quantiles (all zeros when ``k = 0``; a cell left empty keeps its value)."""
    if magnitudes.numel() == 0:
        return torch.zeros(levels)
    q = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    table = torch.quantile(magnitudes.double(), q).float()
    for _ in range(iters):
        codes = nearest_code(magnitudes, table)
        sums = torch.zeros(levels).index_add_(0, codes, magnitudes.float())
        counts = torch.bincount(codes, minlength=levels)
        table = torch.where(counts > 0, sums / counts.clamp(min=1), table).sort().values
    return table


def nearest_code(magnitudes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """int64 codes (shape of ``magnitudes``): the index of the nearest ``table`` entry (the lower on ties)."""
    return (magnitudes.float()[..., None] - table).abs().argmin(dim=-1)


def encode(tau: torch.Tensor, keep: torch.Tensor, table: torch.Tensor, codes: torch.Tensor,
           config: FlexSwitchConfig, where: str) -> SignMask:
    """The SignMask of ``sign(tau) * table[codes]`` on ``keep`` (a one-entry table stores no codes)."""
    signs = torch.sign(tau) * keep
    return SignMask.from_ternary(signs, table.detach(), codes=codes[keep] if table.numel() > 1 else None,
                                 encoding=config.encoding, group_size=config.group_size, where=where)


def candidates(tau: torch.Tensor, config: FlexSwitchConfig, where: str) -> list[Choice]:
    """Every (keep, bits) candidate of one tensor (see the module docstring, stage 1)."""
    out, mags = [], tau.abs()
    for keep in sorted(set(config.keep_ratios)):
        mask = keep_by_sign(tau, 1.0 - keep)
        for bits in (config.bits if keep > 0 else config.bits[:1]):
            table = lloyd_table(mags[mask], 2 ** (bits - 1), config.lloyd_iters)
            codes = nearest_code(mags, table)
            tau_hat = torch.sign(tau) * mask * table[codes]
            distortion = float(((tau - tau_hat) ** 2).sum())
            nbytes = encode(tau, mask, table, codes, config, where).nbytes
            out.append(Choice(keep, bits, nbytes, distortion, int(mask.sum()), table))
    return out


def allocate(options: Mapping[str, list[Choice]], budget_bytes: float) -> dict[str, Choice]:
    """Per tensor the candidate minimizing ``distortion + lam * nbytes``, with the smallest ``lam >= 0``
    (bisection) whose choices fit ``budget_bytes`` in all.

    Raises:
        SparsaError: when even the smallest candidates exceed the budget.
    """
    def pick(lam: float) -> dict[str, Choice]:
        return {n: min(opts, key=lambda c: (c.distortion + lam * c.nbytes, c.nbytes)) for n, opts in options.items()}

    def total(choice: dict[str, Choice]) -> int:
        return sum(c.nbytes for c in choice.values())

    smallest = sum(min(c.nbytes for c in opts) for opts in options.values())
    if smallest > budget_bytes:
        raise SparsaError(f"flexswitch: budget of {budget_bytes:.0f} bytes is below the {smallest} bytes "
                          "the smallest choices take; raise budget_bits")
    if total(pick(0.0)) <= budget_bytes:
        return pick(0.0)
    lo, hi = 0.0, 1.0
    while total(pick(hi)) > budget_bytes:
        lo, hi = hi, hi * 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if total(pick(mid)) <= budget_bytes else (mid, hi)
    return pick(hi)


class GatedTensor:
    """Stage 2's state of one tensor: its rows, threshold, fixed codes and learnable gates and table.

    Args:
        tau: the tensor's task vector (fp32, >= 1-D).
        choice: its allocation (keep > 0, with its magnitude table).
    """

    def __init__(self, tau: torch.Tensor, choice: Choice):
        self.tau = tau
        self.mags = tau.abs().reshape(tau.shape[0] if tau.dim() > 1 else 1, -1)  # [rows, cols]
        self.threshold = float(tau.abs().reshape(-1).kthvalue(tau.numel() - choice.nnz + 1).values)
        self.codes = nearest_code(tau.abs(), choice.table)
        self.table = torch.nn.Parameter(choice.table.clone())
        self.gates = torch.nn.Parameter(torch.zeros(self.mags.shape[0], 1))
        self.entry_bytes = choice.nbytes / max(choice.nnz, 1)

    def thresholds(self, factor: float = 1.0) -> torch.Tensor:
        return self.threshold * factor * torch.exp(self.gates)  # [rows, 1]

    def soft_mask(self, temperature: float) -> torch.Tensor:
        """[rows, cols] in (0, 1), differentiable in the gates."""
        return torch.sigmoid((self.mags - self.thresholds()) / (temperature * self.threshold))

    def hard_mask(self, factor: float = 1.0) -> torch.Tensor:
        """bool, shape of ``tau``."""
        return (self.mags >= self.thresholds(factor)).view(self.tau.shape)

    def tau_hat(self, temperature: float) -> torch.Tensor:
        """The straight-through reconstruction: hard mask forward, soft mask gradient."""
        soft = self.soft_mask(temperature)
        mask = (self.hard_mask().reshape(soft.shape).float() + soft - soft.detach()).view(self.tau.shape)
        return torch.sign(self.tau) * mask * self.table[self.codes]


def train_gates(base: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor], gated: dict[str, GatedTensor],
                loss: LossFn, config: FlexSwitchConfig, progress: bool) -> tuple[float, float]:
    """Stage 2 in place on ``gated``; returns the task loss of the first and last steps.

    ``stored``: the final task vector of every tensor that is not gated (raw scalars, dropped
    tensors' zeros), so training sees the weights the compressed vector will rebuild."""
    if config.steps == 0 or not gated:
        return math.nan, math.nan
    opt = torch.optim.Adam([{"params": [g.table for g in gated.values()], "lr": config.lr},
                            {"params": [g.gates for g in gated.values()], "lr": config.gate_lr}])

    def cost() -> torch.Tensor:
        return sum(g.entry_bytes * g.soft_mask(config.temperature).sum() for g in gated.values())

    with torch.no_grad():
        cost0 = float(cost())
    fixed = {n: (b.float() if n in gated else b.float() + stored[n]) for n, b in base.items()}
    first = last = math.nan
    for step in tqdm(range(config.steps), desc="flexswitch gates", disable=not progress, leave=False):
        weights = {n: (w + gated[n].tau_hat(config.temperature) if n in gated else w) for n, w in fixed.items()}
        task = loss(weights, step)
        total = task + config.rate_weight * torch.relu(cost() / cost0 - 1.0)
        opt.zero_grad()
        total.backward()
        opt.step()
        last = float(task.detach())
        first = last if step == 0 else first
    return first, last


def flexswitch(base: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor], loss: LossFn,
               config: FlexSwitchConfig = FlexSwitchConfig(), *, progress: bool = False
               ) -> tuple[CompressedTaskVector, dict]:
    """Compress one task vector (see the module docstring).

    Args:
        base: name -> base tensor; ``tau``: name -> task vector (same names and shapes).
        loss: the task's loss (see the module docstring), on batches ``0 .. steps - 1``.
        config: budget, choices and training.

    Returns:
        ``(vector, summary)``: the compressed task vector (0-d tensors raw, 4 bytes each) and
        ``{"bits_per_param", "allocation": {name: {"keep", "bits", "nnz"}}, "loss_start",
        "loss_end", "fit_factor"}``.
    """
    numel = sum(t.numel() for t in tau.values())
    raw = {n: t.float().clone() for n, t in tau.items() if t.dim() == 0}
    budget = config.budget_bits * numel / 8 - 4 * len(raw)
    tensors = {n: t.float() for n, t in tau.items() if t.dim() > 0}
    options = {n: candidates(t, config, n) for n, t in tqdm(
        tensors.items(), desc="flexswitch allocation", disable=not progress, leave=False)}
    chosen = allocate(options, budget)

    gated, masks = {}, {}
    for n, t in tensors.items():
        c = chosen[n]
        if c.keep == 0 or c.nnz == 0:
            masks[n] = encode(t, torch.zeros_like(t, dtype=torch.bool), torch.zeros(1), torch.zeros(0), config, n)
            continue
        gated[n] = GatedTensor(t, c)
    stored = {**raw, **{n: m.to_dense(torch.float32) for n, m in masks.items()}}
    loss_start, loss_end = train_gates(base, stored, gated, loss, config, progress)

    def encoded(factor: float) -> dict[str, SignMask]:
        with torch.no_grad():
            return {n: encode(g.tau, g.hard_mask(factor), g.table, g.codes, config, n) for n, g in gated.items()}

    def nbytes(m: Mapping[str, SignMask]) -> int:
        return sum(x.nbytes for x in m.values())

    fixed_bytes = nbytes(masks)
    factor, fitted = 1.0, encoded(1.0)
    if fixed_bytes + nbytes(fitted) > budget:
        lo, hi = 1.0, 2.0
        while fixed_bytes + nbytes(encoded(hi)) > budget:
            lo, hi = hi, hi * 2
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if fixed_bytes + nbytes(encoded(mid)) <= budget else (mid, hi)
        factor, fitted = hi, encoded(hi)
    masks.update(fitted)
    vector = CompressedTaskVector({n: masks[n] for n in tensors}, raw)
    summary = {"bits_per_param": vector.bits_per_param, "loss_start": loss_start, "loss_end": loss_end,
               "fit_factor": factor,
               "allocation": {n: {"keep": chosen[n].keep, "bits": chosen[n].bits, "nnz": vector.masks[n].nnz}
                              for n in tensors}}
    return vector, summary


@register_method("flexswitch", reference_url="https://arxiv.org/abs/2604.28109", kind="trained",
                 params=FLEXSWITCH_SPECS)
def flexswitch_method(task_vector: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], loss: LossFn, *,
                      generator: torch.Generator | None = None, budget_bits: float = FlexSwitchConfig.budget_bits, steps: int = FlexSwitchConfig.steps,
                      lr: float = FlexSwitchConfig.lr, gate_lr: float = FlexSwitchConfig.gate_lr,
                      temperature: float = FlexSwitchConfig.temperature,
                      rate_weight: float = FlexSwitchConfig.rate_weight,
                      lloyd_iters: int = FlexSwitchConfig.lloyd_iters, encoding: str = FlexSwitchConfig.encoding,
                      group_size: int = FlexSwitchConfig.group_size) -> CompressedTaskVector:
    """The registered form of :func:`flexswitch` (keyword parameters: :class:`FlexSwitchConfig`'s scalar
    fields; ``base`` and ``loss`` as :func:`flexswitch` takes them)."""
    config = FlexSwitchConfig(budget_bits=budget_bits, steps=steps, lr=lr, gate_lr=gate_lr, temperature=temperature,
                              rate_weight=rate_weight, lloyd_iters=lloyd_iters, encoding=encoding,
                              group_size=group_size)
    return flexswitch(base, task_vector, loss, config)[0]
