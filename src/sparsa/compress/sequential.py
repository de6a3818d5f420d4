"""Layer-sequential calibration driver for decoder models with ``model.model.layers`` (Llama-style).

GPTQ's recipe: capture the inputs of block 0 once; then for each block, on the device alone:
run the calibration inputs through it with hooks accumulating each linear layer's Hessian,
compress its linears, and run the inputs again through the compressed block to get the next
block's inputs. Each block thus sees the errors of the blocks before it, and only one block's
weights sit on the device, so models larger than the device compress.

Each block is replayed with its own keyword arguments (attention mask, rotary embeddings, ...),
recorded in one forward where every block is a pass-through: blocks need not share them (Gemma-3
mixes sliding-window and global layers, each kind with its own mask and rotary base).
"""

from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsa.compress.hessian import HessianAccumulator
from sparsa.errors import SparsaError
from sparsa.nn.sparse_linear import SparseLinear, decoded_weights
from sparsa.nn.surgery import FilterFn, output_head, set_submodule, target_linears


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers``, or a SparsaError naming the unsupported architecture."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise SparsaError(f"{type(model).__name__}: the calibration driver supports decoder models with "
                          "model.model.layers (Llama-style Hugging Face models)")
    return layers


@contextmanager
def hooks(handles: list):
    """Remove every hook handle on exit, whatever happens."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def block_outputs(layer: nn.Module, hidden: list, kwargs: dict) -> list:
    """Run every calibration input ``[1, L, D]`` through one block."""
    outs = []
    for h in hidden:
        out = layer(h, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@contextmanager
def pass_through(layers: nn.ModuleList, first_inputs: list, per_block: list):
    """Make every block return its input unchanged, appending block 0's input ``[1, L, D]`` to
    ``first_inputs`` and keeping each block's keyword arguments in ``per_block[i]``."""

    def recorder(index: int):
        def forward(*args, **kw):
            hidden = args[0] if args else kw.pop("hidden_states")
            if len(args) > 1:
                raise SparsaError(f"model.layers.{index}: gets {len(args)} positional arguments; the calibration "
                                  "driver replays the hidden states and keyword arguments only")
            if index == 0:
                first_inputs.append(hidden)
            per_block[index] = kw
            return hidden
        return forward

    try:
        for index, layer in enumerate(layers):
            layer.forward = recorder(index)  # an instance attribute shadows the class's forward
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


@torch.no_grad()
def block_inputs(model: nn.Module, windows: torch.Tensor, device, index: int = 0) -> tuple[list, list[dict]]:
    """Inputs of block ``index`` for each window (on ``device``), and each block's keyword arguments
    (``per_block[i]``), recorded in one forward where every block is a pass-through. The blocks
    before ``index`` then run where they are (on the CPU unless moved)."""
    layers = decoder_layers(model)
    others = [child for child in model.model.children() if child is not layers]
    hidden, per_block = [], [None] * len(layers)
    try:
        for child in others:
            child.to(device)
        with pass_through(layers, hidden, per_block):
            for window in windows:
                model.model(window[None].to(device), use_cache=False)
    finally:
        for child in others:
            child.to("cpu")
    if None in per_block:
        raise SparsaError(f"model.layers.{per_block.index(None)}: the decoder never calls this block")
    for before in range(index):
        hidden = block_outputs(layers[before], hidden, per_block[before])
    return hidden, per_block


def calibrate_block(layer: nn.Module, index: int, hidden: list, kwargs: dict, filter_fn: FilterFn, device):
    """Move block ``index`` to ``device``, check its selected linears and run the calibration
    inputs through it (with its keyword arguments ``kwargs``), accumulating each one's Hessian.

    Returns:
        (targets [(fqn, nn.Linear)], Hessians {fqn: [in, in]}, the dense block outputs).
    """
    layer.to(device)
    targets = list(target_linears(layer, filter_fn))
    for fqn, linear in targets:
        if not torch.isfinite(linear.weight).all():
            raise SparsaError(f"model.layers.{index}.{fqn}: weight holds inf/nan")
    stats = {fqn: HessianAccumulator(m.in_features, device, where=f"model.layers.{index}.{fqn}")
             for fqn, m in targets}
    with hooks([m.register_forward_hook(lambda mod, inp, out, fqn=fqn: stats[fqn].add(inp[0]))
                for fqn, m in targets]):
        dense_out = block_outputs(layer, hidden, kwargs)
    return targets, {fqn: acc.H for fqn, acc in stats.items()}, dense_out


def record(totals: dict, fmt, linear: nn.Linear) -> None:
    """Add one compressed linear to the driver's running totals."""
    totals["layers"] += 1
    totals["params"] += fmt.numel
    totals["compressed_bytes"] += fmt.nbytes
    totals["dense_bytes"] += linear.weight.numel() * linear.weight.element_size()


@torch.no_grad()
def compress_head_(model: nn.Module, config, method, hidden: list, filter_fn: FilterFn, device, totals: dict) -> None:
    """Compress ``lm_head`` when the filter selects it (``--head``): its Hessian comes from the
    last block's outputs after the final norm, i.e. exactly what the head sees."""
    head = output_head(model, filter_fn)
    if head is None:
        return
    norm = model.model.norm.to(device)
    head.to(device)
    acc = HessianAccumulator(head.in_features, device, where="lm_head")
    for h in hidden:
        acc.add(norm(h))
    fmt = method.compress_weight(head.weight.data.float(), config, where="lm_head", H=acc.H)
    model.lm_head = SparseLinear(fmt.to("cpu"), head.bias)
    norm.to("cpu")
    record(totals, fmt, head)


def finish_block(layer: nn.Module, index: int, hidden: list, kwargs: dict, dense_out: list) -> tuple[list, float]:
    """Run the calibration inputs through the compressed block (with its ``kwargs``); return its
    outputs (the next block's inputs) and its relative squared output error against ``dense_out``."""
    with decoded_weights(layer):
        hidden = block_outputs(layer, hidden, kwargs)
    error = sum((h - d).float().square().sum() for h, d in zip(hidden, dense_out, strict=True))
    error = float(error / sum(d.float().square().sum() for d in dense_out))
    if error != error:
        raise SparsaError(f"model.layers.{index}: compressed block outputs are NaN")
    layer.to("cpu")
    return hidden, error


@torch.no_grad()
def compress_sequential_(model: nn.Module, config, method, windows: torch.Tensor, *, filter_fn: FilterFn,
                         device="cpu", progress: bool = True) -> dict:
    """Compress every selected linear of every block in place, block by block.

    Args:
        model: Llama-style HF causal LM on the CPU.
        config: a calibrated method config; method: its registry entry.
        windows: [nsamples, seqlen] calibration token ids.
    Returns:
        dict with ``layers`` (linears compressed), ``params``, ``compressed_bytes``, ``dense_bytes``,
        ``block_errors`` (relative squared output error of each block on the calibration inputs).
    """
    layers = decoder_layers(model)
    hidden, kwargs = block_inputs(model, windows, device)
    totals = {"layers": 0, "params": 0, "compressed_bytes": 0, "dense_bytes": 0, "block_errors": []}
    bar = tqdm(list(enumerate(layers)), desc=f"compress {config.method}", disable=not progress, unit="block")
    for index, layer in bar:
        targets, hessians, dense_out = calibrate_block(layer, index, hidden, kwargs[index], filter_fn, device)
        for fqn, linear in targets:
            fmt = method.compress_weight(linear.weight.data.float(), config, where=f"model.layers.{index}.{fqn}",
                                         H=hessians.pop(fqn))
            set_submodule(layer, fqn, SparseLinear(fmt, linear.bias))
            record(totals, fmt, linear)
        hidden, error = finish_block(layer, index, hidden, kwargs[index], dense_out)
        totals["block_errors"].append(error)
        bar.set_postfix(rel_err=f"{error:.2e}")
    compress_head_(model, config, method, hidden, filter_fn, device, totals)
    return totals
