"""``--method auto``: choose each linear layer's format under a global bits/param budget.

One layer-sequential pass (as ``compress_sequential_``) compresses every linear layer with each
candidate and records ``(bytes, error)``, error being the Hessian-weighted output error
``tr((W - Q) H (W - Q)ᵀ) = (2/n)·‖X (W - Q)ᵀ‖²``. The next block's inputs come from the
candidate nearest the budget from below (the final choice is not known yet, so later layers see
a provisional prefix: a second-order mismatch). Then a multiple-choice knapsack picks one
candidate per layer: the Lagrangian ``min Σ error + λ·bytes`` by bisection on λ, then a greedy
pass spends what is left of the budget on the best error reduction per byte.
"""

import torch
from tqdm.auto import tqdm

from sparsa.compress.config import AutoConfig, SparseGPTConfig, SpQRConfig
from sparsa.compress.registry import get_method, register_method
from sparsa.compress.sequential import calibrate_block, decoder_layers, finish_block, block_inputs
from sparsa.errors import SparsaError
from sparsa.nn.sparse_linear import SparseLinear
from sparsa.nn.surgery import output_head, set_submodule


def candidates(config: AutoConfig) -> list:
    """The candidate configs, sharing the calibration settings of ``config``."""
    cal = {"nsamples": config.nsamples, "seqlen": config.seqlen, "calib": config.calib}
    return [SpQRConfig(bits=2, **cal), SpQRConfig(bits=3, outlier_threshold=1.0, **cal), SpQRConfig(bits=3, **cal),
            SpQRConfig(bits=4, **cal),
            SparseGPTConfig(pattern="2:4", bits=4, group_size=128, **cal),
            SparseGPTConfig(sparsity=0.5, bits=3, group_size=128, **cal)]


def candidate_label(config) -> str:
    """Short name of a candidate, e.g. ``spqr-3`` or ``sparsegpt-2:4-4bit``."""
    if config.method == "spqr":
        return f"spqr-{config.bits}-tau{config.outlier_threshold:g}"
    return f"sparsegpt-{config.pattern if config.pattern != 'unstructured' else f'{config.sparsity:.0%}'}-{config.bits}bit"


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)ᵀ)`` for W, Q: [out, in], H: [in, in]."""
    D = (W.float() - Q.float())
    return float(((D @ H) * D).sum())


def allocate(options: list[list[tuple[int, float]]], budget_bytes: float) -> list[int]:
    """One option per layer minimising Σ error subject to Σ bytes <= budget_bytes.

    Args:
        options: per layer, (bytes, error) of each candidate.
    Returns:
        the chosen candidate index per layer (the smallest ones if nothing fits).
    """
    def pick(lam):
        return [min(range(len(o)), key=lambda k: (o[k][1] + lam * o[k][0], o[k][0])) for o in options]

    def size(choice):
        return sum(o[k][0] for o, k in zip(options, choice))

    lo, hi = 0.0, 1.0
    while size(pick(hi)) > budget_bytes and hi < 1e30:
        hi *= 10
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(pick(mid)) > budget_bytes else (lo, mid)
    choice = pick(hi)
    if size(choice) > budget_bytes:
        return [min(range(len(o)), key=lambda k: o[k][0]) for o in options]
    while True:  # spend the slack: best error drop per extra byte that still fits
        slack, best = budget_bytes - size(choice), None
        for layer, (o, k) in enumerate(zip(options, choice)):
            for j, (nbytes, err) in enumerate(o):
                extra, gain = nbytes - o[k][0], o[k][1] - err
                if gain > 0 and 0 < extra <= slack and (best is None or gain / extra > best[0]):
                    best = (gain / extra, layer, j)
        if best is None:
            return choice
        choice[best[1]] = best[2]


@register_method(AutoConfig, driver=True)
@torch.no_grad()
def compress_auto_(model, config: AutoConfig, method, windows, *, filter_fn, device="cpu", progress=True) -> dict:
    """Compress every selected linear with the candidate the budget allocation picks (module docstring)."""
    if output_head(model, filter_fn) is not None:
        raise SparsaError("--method auto does not compress the output head; drop --head")
    layers = decoder_layers(model)
    hidden, kwargs = block_inputs(model, windows, device)
    cands = candidates(config)
    records, block_errors = [], []  # (layer, fqn, formats, [(bytes, error)], bias, dense bytes)
    bar = tqdm(list(enumerate(layers)), desc="compress auto", disable=not progress, unit="block")
    for index, layer in bar:
        targets, hessians, dense_out = calibrate_block(layer, index, hidden, kwargs[index], filter_fn, device)
        for fqn, linear in targets:
            where, H, W = f"model.layers.{index}.{fqn}", hessians.pop(fqn), linear.weight.data.float()
            formats = [get_method(c.method).compress_weight(W, c, where=where, H=H) for c in cands]
            options = [(f.nbytes, output_error(W, f.to_dense(), H)) for f in formats]
            fits = [k for k, (nbytes, _) in enumerate(options) if 8 * nbytes <= config.budget * W.numel()]
            provisional = max(fits, key=lambda k: options[k][0]) if fits else min(
                range(len(options)), key=lambda k: options[k][0])
            set_submodule(layer, fqn, SparseLinear(formats[provisional], linear.bias))
            records.append((layer, fqn, formats, options, linear.bias,
                            linear.weight.numel() * linear.weight.element_size()))
        hidden, error = finish_block(layer, index, hidden, kwargs[index], dense_out)
        block_errors.append(error)
        bar.set_postfix(rel_err=f"{error:.2e}")
    params = sum(r[2][0].numel for r in records)
    choice = allocate([r[3] for r in records], config.budget * params / 8)
    totals = {"layers": len(records), "params": params, "compressed_bytes": 0, "dense_bytes": 0,
              "block_errors": block_errors, "choices": {}}
    for (layer, fqn, formats, _, bias, dense_bytes), k in zip(records, choice):
        set_submodule(layer, fqn, SparseLinear(formats[k].to("cpu"), bias))
        totals["compressed_bytes"] += formats[k].nbytes
        totals["dense_bytes"] += dense_bytes
        label = candidate_label(cands[k])
        totals["choices"][label] = totals["choices"].get(label, 0) + 1
    return totals
