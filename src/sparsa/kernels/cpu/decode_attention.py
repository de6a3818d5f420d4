"""One decode step of rotary self-attention on CPU (numba): rotate, append to the cache, attend.

For a single new token per sequence this replaces some twenty small torch calls per layer
(rotary halves, cache writes, transposes, ``scaled_dot_product_attention``) by one compiled
call; at decode the attention is tiny and the calls' overhead is what costs. The math is the
Llama convention (Hugging Face ``apply_rotary_pos_emb``; ``half = head_dim / 2``)::

    rot(u)[i] = u[i] * cos[i] - u[i + half] * sin[i]          i <  half
    rot(u)[i] = u[i] * cos[i] + u[i - half] * sin[i]          i >= half
    out_h = softmax_j(rot(q_h) · K[g(h), j] / sqrt(head_dim)) V[g(h), j],   j <= pos

with grouped-query heads ``g(h) = h // (heads / kv_heads)``. The torch path of
:class:`sparsa.nn.lean_decode.LeanLlama` is the reference it is tested against.
"""

import math

import numba
import numpy as np

from sparsa.kernels.cpu.fast_exp import exp32


@numba.njit(fastmath=True, error_model="numpy", cache=True)
def attend_group(q, k, v, cos, sin, k_cache, v_cache, pos, out, b, kh):  # pragma: no cover - compiled
    """Sequence ``b``'s kv head ``kh``: write ``rot(k)``, ``v`` at cache position ``pos``, then ``out`` for
    the query heads that share it (arguments as :func:`rotary_attention_step`'s)."""
    hd = cos.shape[0]
    heads, kv_heads = q.shape[1] // hd, k.shape[1] // hd
    group, half = heads // kv_heads, hd // 2
    scale = np.float32(1.0 / math.sqrt(hd))
    base = kh * hd
    for i in range(half):
        lo, hi = k[b, base + i], k[b, base + i + half]
        k_cache[b, kh, pos, i] = lo * cos[i] - hi * sin[i]
        k_cache[b, kh, pos, i + half] = hi * cos[i + half] + lo * sin[i + half]
    for i in range(hd):
        v_cache[b, kh, pos, i] = v[b, base + i]
    keys, values = k_cache[b, kh], v_cache[b, kh]  # [L, hd]
    qr = np.empty(hd, np.float32)
    scores = np.empty(pos + 1, np.float32)
    acc = np.empty(hd, np.float32)
    for h in range(kh * group, (kh + 1) * group):
        base = h * hd
        for i in range(half):
            lo, hi = q[b, base + i], q[b, base + i + half]
            qr[i] = (lo * cos[i] - hi * sin[i]) * scale
            qr[i + half] = (hi * cos[i + half] + lo * sin[i + half]) * scale
        top = -np.inf
        for j in range(pos + 1):
            dot = np.float32(0.0)
            for i in range(hd):
                dot += qr[i] * keys[j, i]
            scores[j] = dot
            top = max(top, dot)
        total = np.float32(0.0)
        for j in range(pos + 1):
            scores[j] = exp32(scores[j] - top)
            total += scores[j]
        acc[:] = 0.0
        for j in range(pos + 1):
            p = scores[j]
            for i in range(hd):
                acc[i] += p * values[j, i]
        inv = np.float32(1.0) / total
        for i in range(hd):
            out[b, base + i] = acc[i] * inv


@numba.njit(cache=True, error_model="numpy")
def rotary_attention_step(q, k, v, cos, sin, k_cache, v_cache, pos, out):  # pragma: no cover - compiled
    """Write ``rot(k)``, ``v`` at cache position ``pos`` and ``out`` = attention of ``rot(q)``.

    Args:
        q: [B, heads * hd] fp32; k, v: [B, kv_heads * hd] fp32 (projections of the new token).
        cos, sin: [hd] fp32 at position ``pos`` (every sequence is at the same position).
        k_cache, v_cache: [B, kv_heads, L, hd] fp32, positions ``< pos`` filled; ``pos < L``.
        out: [B, heads * hd] fp32, written.
    """
    for b in range(q.shape[0]):
        for kh in range(k.shape[1] // cos.shape[0]):
            attend_group(q, k, v, cos, sin, k_cache, v_cache, pos, out, b, kh)
