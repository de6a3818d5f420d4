"""End-to-end decode of a Llama-style stack with random weights, for ``sparsa bench gpu``.

Each variant decodes ``new_tokens`` tokens at batch 1 through ``layers`` decoder layers of the
given shape (RMS norm, q/k/v/o projections, attention over a growing fp16 KV cache, SiLU MLP),
every projection a ``Y = X Wᵀ`` through :func:`sparsa.kernels.linear` on its format:

* dense fp16 (``F.linear``, cuBLAS);
* SpQR 3-bit, β1 = β2 = 16, 1% outliers (random codes, statistics and permutation);
* BlockSparse with 32x32 blocks at 50% and 70% (:data:`VARIANTS`).

All layers share one set of random matrices per variant (building 7B of random SpQR codes
would take longer than the benchmark); one layer's weights exceed a GPU's L2 (90 MB for SpQR-3
at 7B shapes, 400 MB dense), so every layer still streams them from memory. Tokens/s excludes a
two-token warm-up (Triton compiles there) and is the median of :data:`ROUNDS` round-robin rounds,
every variant once per round: on an H100 (2026-11-23) whichever variant decoded first in the
process ran 2.6-5.3x slower than when it decoded later, so one pass per variant in turn ranked
them by their order.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsa.bench.spmm import block_weight
from sparsa.bench.timing import median, round_robin, timed
from sparsa.formats import BlockSparse, SpQR
from sparsa.kernels import linear

Linear = Callable[[torch.Tensor], torch.Tensor]
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
ROUNDS = 3  # timed rounds, every variant once per round; tokens/s is the median


@dataclass(frozen=True)
class DecodeShape:
    """A Llama-style stack: hidden size, MLP width, attention heads, layers, tokens to decode."""

    hidden: int = 4096
    ffn: int = 11008
    heads: int = 32
    layers: int = 32
    new_tokens: int = 64

    def matrix(self, name: str) -> tuple[int, int]:
        """(out, in) of a projection."""
        return {"gate": (self.ffn, self.hidden), "up": (self.ffn, self.hidden),
                "down": (self.hidden, self.ffn)}.get(name, (self.hidden, self.hidden))


def random_spqr(out_features: int, in_features: int, g: torch.Generator) -> SpQR:
    """3-bit SpQR with β1 = β2 = 16, random codes/statistics/permutation, 1% outliers (weights ~0.02)."""
    groups, runs = in_features // 16, out_features // 16

    def stats(step: float, low: float) -> torch.Tensor:
        return torch.stack([torch.full((runs, groups), step), torch.full((runs, groups), low)], -1).half()

    return SpQR.from_parts(
        codes=torch.randint(0, 8, (out_features, in_features), generator=g), perm=torch.randperm(in_features, generator=g),
        scale_codes=torch.randint(0, 8, (out_features, groups), generator=g),
        zero_codes=torch.randint(0, 8, (out_features, groups), generator=g), scale_stats=stats(0.001, 0.002),
        zero_stats=stats(0.5, 2.0), outlier_mask=torch.rand(out_features, in_features, generator=g) < 0.01,
        outlier_values_dense=torch.randn(out_features, in_features, generator=g) * 0.05, bits=3, group_size=16,
        stat_bits=3, stat_group_size=16)


def random_dense(out_features: int, in_features: int, g: torch.Generator) -> torch.Tensor:
    """Dense fp16 weights ~0.02."""
    return (torch.randn(out_features, in_features, generator=g) * 0.02).half()


def random_blocks(sparsity: float) -> Callable[[int, int, torch.Generator], BlockSparse]:
    """A builder of fp16 32x32-block weights (~0.02) with exactly ``sparsity`` of their blocks removed."""
    return lambda out_features, in_features, g: BlockSparse.from_dense(
        (block_weight(out_features, in_features, (32, 32), sparsity, g) * 0.02).half(), block=(32, 32))


VARIANTS: dict[str, Callable[[int, int, torch.Generator], object]] = {
    "dense fp16": random_dense, "SpQR 3-bit": random_spqr, "block 50%": random_blocks(0.5),
    "block 70%": random_blocks(0.7)}


def variant_weights(name: str, shape: DecodeShape, device: str, g: torch.Generator) -> dict[str, object]:
    """projection -> dense fp16 tensor or format, on ``device``."""
    return {p: VARIANTS[name](*shape.matrix(p), g).to(device) for p in PROJECTIONS}


def projections(weights: dict[str, object], apply: Callable = linear) -> dict[str, Linear]:
    """projection -> ``x -> x Wᵀ`` (dense: ``F.linear``; formats: ``apply(x, fmt)``, by default the
    dispatched kernel)."""
    return {p: (lambda x, w=w: F.linear(x, w)) if isinstance(w, torch.Tensor) else (lambda x, w=w: apply(x, w))
            for p, w in weights.items()}


def decode(run: dict[str, Linear], shape: DecodeShape, tokens: int, device: str, seed: int = 0) -> None:
    """Decode ``tokens`` steps, each from a random input, through every layer and the KV cache."""
    g = torch.Generator(device=device).manual_seed(seed)
    head_dim = shape.hidden // shape.heads
    cache_k = [torch.empty(1, shape.heads, 0, head_dim, dtype=torch.float16, device=device) for _ in range(shape.layers)]
    cache_v = list(cache_k)
    for _ in range(tokens):
        h = torch.randn(1, shape.hidden, generator=g, device=device).half()
        for layer in range(shape.layers):
            x = F.rms_norm(h, (shape.hidden,))
            q, k, v = (run[p](x).view(1, shape.heads, 1, head_dim) for p in ("q", "k", "v"))
            cache_k[layer] = torch.cat([cache_k[layer], k], dim=2)
            cache_v[layer] = torch.cat([cache_v[layer], v], dim=2)
            attention = F.scaled_dot_product_attention(q, cache_k[layer], cache_v[layer])
            h = h + run["o"](attention.reshape(1, shape.hidden))
            x = F.rms_norm(h, (shape.hidden,))
            h = h + run["down"](F.silu(run["gate"](x)) * run["up"](x))


def tokens_per_second(run: dict[str, Linear], shape: DecodeShape, device: str) -> float:
    """Decode ``shape.new_tokens`` tokens after a two-token warm-up; tokens per second."""
    decode(run, shape, 2, device)
    _, seconds = timed(lambda: decode(run, shape, shape.new_tokens, device), device)
    return shape.new_tokens / seconds


def run_decode_variants(shape: DecodeShape, device: str, *, variants=VARIANTS, apply: Callable = linear,
                        seed: int = 0, rounds: int = ROUNDS) -> list[dict]:
    """tokens/s of every variant, the median of ``rounds`` round-robin rounds (``tokens_per_s_rounds``
    keeps each); each projection is first checked against its own weight decoded to dense fp16 on
    one random token (relative error below 1%). Every variant's weights stay on ``device`` together."""
    rows, runs = [], {}
    for name in variants:
        weights = variant_weights(name, shape, device, torch.Generator().manual_seed(seed))
        run = runs[name] = projections(weights, apply)
        error = 0.0
        for p, w in weights.items():
            dense = w if isinstance(w, torch.Tensor) else w.to_dense(torch.float16)
            x = torch.randn(1, dense.shape[1], generator=torch.Generator().manual_seed(seed)).to(device, torch.float16)
            want = F.linear(x, dense).float()
            error = max(error, float((run[p](x).float() - want).norm() / want.norm().clamp_min(1e-30)))
        if error > 1e-2:
            raise AssertionError(f"bench gpu decode: {name} differs from its dense twin (relative error {error:.2e})")
        rows.append({"variant": name, "rel_error": error, "tokens_per_s_rounds": []})
    samples = round_robin({name: (lambda run=run: tokens_per_second(run, shape, device))
                           for name, run in runs.items()}, rounds)
    for row in rows:
        row["tokens_per_s_rounds"] = samples[row["variant"]]
        row["tokens_per_s"] = median(row["tokens_per_s_rounds"])
    dense_speed = next((r["tokens_per_s"] for r in rows if r["variant"] == "dense fp16"), None)
    for r in rows:
        if dense_speed:
            r["x_dense"] = r["tokens_per_s"] / dense_speed
    return rows
