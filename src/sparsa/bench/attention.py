"""``sparsa attention bench``: AnchorAttention's Triton kernels against PyTorch SDPA (CUDA).

Llama-3.1-8B head shapes (32 query heads, 8 KV heads, head dim 128, bf16, batch 1) from 8k to
128k tokens. Inputs are synthetic with a known structure, so the density is set, not random:
in score units (``q . k * scale``) the initial keys score ``SINK`` (the anchor of every row),
a share ``heavy`` of the other keys score ``HEAVY`` (5 below the anchor, within the bench's
theta of 7: gathered as stripes), the rest score about 0 (dropped); the queries carry a little
noise off that axis. Either identification rule (``config.identify``) keeps exactly the planted keys.

Per length, in one process: dense causal SDPA (``enable_gqa``; FlashAttention on Hopper), the
whole AnchorAttention call, its selection alone (K1 anchors + K2 CSR) and its compute alone (K3),
and the streaming floor (K3 with no stripes). Times: median of ``triton.testing.do_bench`` in ms.
Without CUDA nothing is timed: the command says so and exits 0.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsa.attention.config import AnchorConfig
from sparsa.bench.results import machine, write_results
from sparsa.bench.timing import cuda_timer
from sparsa.kernels.stripe_regions import StripeIndex

BLOCK_N = 64  # keys per chunk in K1 and K3
NO_CUDA = "no CUDA device: sparsa attention bench times GPU kernels and ran nothing here"
SINK, HEAVY = 20.0, 15.0  # score of the initial keys and of the planted stripe keys


@dataclass(frozen=True)
class AttentionBenchSettings:
    """Lengths, head shapes, the planted stripe share, the AnchorAttention config and timing budget."""

    seqlens: tuple[int, ...] = (8192, 16384, 32768, 65536, 131072)
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    heavy: float = 0.05
    config: AnchorConfig = AnchorConfig(theta=7.0, block_m=128, step=16, init=128)
    dtype: str = "bfloat16"
    rep_ms: int = 200
    seed: int = 0

    @classmethod
    def quick(cls) -> "AttentionBenchSettings":
        return cls(seqlens=(8192, 32768), rep_ms=50)


def planted_qkv(n: int, s: AttentionBenchSettings, device: str):
    """q [1, Hq, n, D], k, v [1, Hkv, n, D] with the score structure of the module docstring."""
    g = torch.Generator(device=device).manual_seed(s.seed)
    D = s.head_dim
    q = torch.randn(1, s.q_heads, n, D, device=device, generator=g) / math.sqrt(D) * 0.1
    q[..., 0] = math.sqrt(D)  # along u = e_0: q . k * scale = k[0]
    level = torch.zeros(1, s.kv_heads, n, device=device)
    level[..., torch.rand(n, device=device, generator=g) < s.heavy] = HEAVY
    level[..., : s.config.init] = SINK
    k = torch.randn(1, s.kv_heads, n, D, device=device, generator=g)
    k[..., 0] = level  # the score levels, with no noise along u
    v = torch.randn(1, s.kv_heads, n, D, device=device, generator=g)
    dtype = getattr(torch, s.dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def run_length(n: int, s: AttentionBenchSettings, device: str, timer) -> dict:
    """Every timing of one length, and the density AnchorAttention reached there."""
    from sparsa.kernels.triton.anchor import SELECT_BLOCK_N, anchor_attention_triton
    from sparsa.kernels.triton.anchor_dense import anchors_triton
    from sparsa.kernels.triton.stripe_attention import stripe_attention_triton
    from sparsa.kernels.triton.stripe_index import stripe_index_triton

    q, k, v = planted_qkv(n, s, device)
    regions, theta, scale, block_n = s.config.regions, s.config.theta, s.head_dim ** -0.5, BLOCK_N
    identify = s.config.identify
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    index = anchor_attention_triton(q, k, v, regions, theta, scale, identify)[2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    none = StripeIndex(torch.zeros_like(index.indptr), index.indices[:0], index.batch, index.heads, index.groups)

    def select():
        anchors, pooled_anchors, pooled_queries = anchors_triton(q, k, regions, scale, block_n)
        return stripe_index_triton(q, k, anchors, pooled_anchors, pooled_queries, regions, theta, scale, identify,
                                   SELECT_BLOCK_N)

    ms = {"sdpa": timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)),
          "anchor": timer(lambda: anchor_attention_triton(q, k, v, regions, theta, scale, identify)),
          "selection": timer(select),
          "compute": timer(lambda: stripe_attention_triton(q, k, v, regions, index, scale, block_n)),
          "streaming": timer(lambda: stripe_attention_triton(q, k, v, regions, none, scale, block_n))}
    heads = q.shape[1]
    density = (regions.dense_pairs(n) * heads + regions.stripe_pairs(index, n)) / (heads * n * (n + 1) / 2)
    return {"seqlen": n, **{f"{name}_ms": t for name, t in ms.items()}, "speedup": ms["sdpa"] / ms["anchor"],
            "selection_share": ms["selection"] / ms["anchor"], "density": density, "anchor_peak_gib": peak}


def markdown(payload: dict) -> str:
    m, s = payload["machine"], payload["settings"]
    lines = ["# AnchorAttention kernels against SDPA", "",
             f"{m['date']}, {m.get('gpu', m['device'])}, torch {m['torch']}; {s['q_heads']}/{s['kv_heads']} heads, "
             f"head dim {s['head_dim']}, {s['dtype']}, batch 1; planted stripe share {s['heavy']:.0%}; "
             f"identification {s['config']['identify']}, theta {s['config']['theta']:g}", "",
             "| tokens | SDPA ms | anchor ms | speed-up | selection ms (share) | compute ms | streaming ms | density |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['seqlen']} | {r['sdpa_ms']:.2f} | {r['anchor_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['selection_ms']:.2f} ({r['selection_share']:.0%}) | {r['compute_ms']:.2f} | "
                     f"{r['streaming_ms']:.2f} | {r['density']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["seqlen"] for r in rows]
    for key, style in (("sdpa_ms", "k-o"), ("anchor_ms", "b-o"), ("selection_ms", "g--"), ("streaming_ms", "r:")):
        ax.plot(n, [r[key] for r in rows], style, label=key.removesuffix("_ms"))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("ms per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_attention_bench(s: AttentionBenchSettings, *, out_dir="bench/results", name: str = "attention",
                        progress: bool = True) -> dict:
    """Time every length on CUDA and write ``<name>.{json,md,png}``; without CUDA return
    ``{"skipped": ...}`` and write nothing."""
    if not torch.cuda.is_available():
        return {"skipped": NO_CUDA}
    timer = cuda_timer(s.rep_ms, warmup=5)
    rows = [run_length(n, s, "cuda", timer) for n in tqdm(s.seqlens, desc="attention bench", disable=not progress)]
    payload = {"settings": asdict(s), "machine": machine("cuda"), "rows": rows}
    write_results(out_dir, name, payload, markdown(payload), figure(payload))
    return payload
