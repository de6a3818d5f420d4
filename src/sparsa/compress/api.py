"""``compress_(model, config)``: the one entry point that compresses a model's linear layers in place."""

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsa.compress.config import MethodConfig
from sparsa.compress.registry import get_method
from sparsa.compress.sequential import compress_sequential_
from sparsa.errors import SparsaError
from sparsa.nn.sparse_linear import SparseLinear
from sparsa.nn.surgery import FilterFn, decoder_linears, set_submodule, target_linears, untie_compressed_head


@dataclass
class CompressSummary:
    """What ``compress_`` did.

    Attributes:
        method: registered method name.
        layers: linear layers compressed.
        params: their parameter count.
        compressed_bytes: bytes of their formats (exactly what a checkpoint writes for them).
        dense_bytes: bytes of the same weights before compression.
        bits_per_param: ``8 * compressed_bytes / params``.
        seconds: wall time of the compression.
        block_errors: calibrated methods: relative squared output error of each block.
        choices: ``auto``: how many layers took each candidate.
    """

    method: str
    layers: int
    params: int
    compressed_bytes: int
    dense_bytes: int
    bits_per_param: float
    seconds: float
    block_errors: list[float] = field(default_factory=list)
    choices: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def compress_(model: nn.Module, config: MethodConfig, *, calibration: torch.Tensor | None = None,
              filter_fn: FilterFn = decoder_linears, device="cpu", progress: bool = True) -> CompressSummary:
    """Replace every selected ``nn.Linear`` by a ``SparseLinear`` holding its compressed weight.

    Args:
        model: any torch model; changed in place.
        config: a method config (e.g. ``RTNConfig(bits=4, group_size=32)``).
        filter_fn: ``(module, fqn) -> bool`` picks the layers; default: all linears but the output head
            (``all_linears`` takes the head too; a compressed head is untied from the embeddings).
        calibration: [nsamples, seqlen] token ids, for methods that need calibration (gptq, spqr,
            sparsegpt, wanda): they run block by block through ``compress_sequential_``.
        device: where the calibrated methods compute (one block there at a time).
        progress: show a progress bar on stderr.
    """
    method = get_method(config.method)
    start = time.perf_counter()
    for fqn, linear in target_linears(model, filter_fn):
        config.check_weight(tuple(linear.weight.shape), fqn)
    if config.needs_calibration:
        if calibration is None:
            raise SparsaError(f"--method {config.method} needs calibration windows")
        driver = method.driver or compress_sequential_
        totals = driver(model, config, method, calibration, filter_fn=filter_fn, device=device, progress=progress)
        untie_compressed_head(model)
        return CompressSummary(method=config.method, bits_per_param=8 * totals["compressed_bytes"] / max(totals["params"], 1),
                               seconds=time.perf_counter() - start, **totals)
    targets = list(target_linears(model, filter_fn))
    replaced: dict[int, SparseLinear] = {}  # id(nn.Linear) -> its replacement, shared by aliases
    params = compressed = dense = 0
    for fqn, linear in tqdm(targets, desc=f"compress {config.method}", disable=not progress, unit="layer"):
        if id(linear) not in replaced:
            fmt = method.compress_weight(linear.weight.data, config, where=fqn)
            replaced[id(linear)] = SparseLinear(fmt, linear.bias)
            params += fmt.numel
            compressed += fmt.nbytes
            dense += linear.weight.numel() * linear.weight.element_size()
        set_submodule(model, fqn, replaced[id(linear)])
    untie_compressed_head(model)
    return CompressSummary(method=config.method, layers=len(replaced), params=params, compressed_bytes=compressed,
                           dense_bytes=dense, bits_per_param=8 * compressed / max(params, 1),
                           seconds=time.perf_counter() - start)
