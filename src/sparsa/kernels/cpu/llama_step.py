"""One single-token decode step of a Llama block stack whose projections are all SpQR, in one
compiled call (numba): no Python between the 7 x layers matrix products.

At a single token the SpQR products take a few microseconds of arithmetic each, so the
per-call cost of going through Python, torch and the numba dispatcher (some 15 us per
projection) dominated. This step runs, per layer and for every sequence of the batch::

    h = rms_norm(x) * w_in;  q, k, v = h Wq^T, h Wk^T, h Wv^T
    x += attention(rotary(q), rotary(k) -> cache, v -> cache) Wo^T          (decode_attention)
    h = rms_norm(x) * w_post;  x += (silu(h Wg^T) * h Wu^T) Wd^T

and returns ``rms_norm(x) * w_final``; the output head stays with the caller. Each product is
the SpQR VNNI kernel (:func:`sparsa.kernels.cpu.spqr.compiled_vnni`), multi-threaded inside.
The products that share an input (q, k, v; gate, up) run as one parallel region. The
reference is :class:`sparsa.nn.lean_decode.LeanLlama`'s per-module path.
"""

import functools

import numba
import numpy as np
from numba.typed import List

from sparsa.formats.spqr import SpQR
from sparsa.kernels.cpu.decode_attention import rotary_attention_step
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.cpu.spqr import compiled_vnni, spqr_layout, takes_vnni


def layout_of(weight: SpQR):
    """The weight's cached kernel layout (:func:`sparsa.kernels.cpu.spqr.spqr_layout`)."""
    return cached_layout(weight, spqr_layout)


def spqr_operand(weight: SpQR) -> tuple:
    """The arrays the VNNI kernel reads for ``weight``, as one tuple (for a typed list)."""
    lay = cached_layout(weight, spqr_layout)
    return (lay.perm, lay.codes, lay.stat_codes, lay.scale_stats, lay.zero_stats, weight.stat_group_size,
            lay.outlier_slots, lay.outlier_pos, lay.outlier_delta, weight.shape[0])


def stack_operands(weights: list[list[SpQR]]) -> List | None:
    """A typed list of operands, layer-major (q, k, v, o, gate, up, down per layer), or None when
    a weight cannot take the VNNI kernel or the group sizes differ."""
    flat = [w for layer in weights for w in layer]
    if not flat or not all(isinstance(w, SpQR) and takes_vnni(w) for w in flat):
        return None
    layouts = [cached_layout(w, spqr_layout) for w in flat]
    if (len({w.group_size for w in flat}) != 1 or len({w.shape[1] <= 2**15 for w in flat}) != 1
            or len({lay.three_bit for lay in layouts}) != 1):
        return None  # one kernel, one position dtype
    operands = List()
    for w in flat:
        operands.append(spqr_operand(w))
    return operands


@numba.njit(fastmath=True, cache=True)
def rms_norm_rows(x, weight, eps, out):  # pragma: no cover - compiled
    """out[b] = x[b] / sqrt(mean(x[b]^2) + eps) * weight (fp32, as ``F.rms_norm`` then the scale)."""
    batch, dim = x.shape
    for b in range(batch):
        total = np.float32(0.0)
        for k in range(dim):
            total += x[b, k] * x[b, k]
        r = np.float32(1.0) / np.sqrt(total / np.float32(dim) + eps)
        for k in range(dim):
            out[b, k] = (x[b, k] * r) * weight[k]


@functools.cache
def compiled_step(group_size: int, three_bit: bool):
    """The step for SpQR weights of ``group_size`` columns per group (in the 3-bit layout or not)."""
    spqr, stacked = compiled_vnni(group_size, three_bit)

    @numba.njit
    def product(h, operand, tasks):  # pragma: no cover - compiled
        perm, codes, stat_codes, sstats, zstats, stat_rows, slots, pos, delta, out_features = operand
        y = np.empty((h.shape[0], out_features), np.float32)
        spqr(h, perm, codes, stat_codes, sstats, zstats, stat_rows, slots, pos, delta, y, tasks)
        return y

    @numba.njit
    def output(h, operand):  # pragma: no cover - compiled
        return np.empty((h.shape[0], operand[9]), np.float32)

    @numba.njit
    def llama_step(x, operands, norm_in, norm_post, norm_final, eps, k_cache, v_cache, cos, sin, pos,
                   out, tasks):  # pragma: no cover - compiled
        """Advance ``x [B, D]`` (embedded tokens at position ``pos``) through every layer, filling
        the caches [layers, B, kv_heads, L, hd]; ``out [B, D]`` = the final norm's output."""
        h = np.empty_like(x)
        for i in range(norm_in.shape[0]):
            rms_norm_rows(x, norm_in[i], eps, h)
            q, k, v = output(h, operands[7 * i]), output(h, operands[7 * i + 1]), output(h, operands[7 * i + 2])
            stacked(h, operands[7 * i], operands[7 * i + 1], operands[7 * i + 2], q, k, v, 3, tasks)
            attended = np.empty_like(q)
            rotary_attention_step(q, k, v, cos, sin, k_cache[i], v_cache[i], pos, attended)
            x += product(attended, operands[7 * i + 3], tasks)
            rms_norm_rows(x, norm_post[i], eps, h)
            gate, up = output(h, operands[7 * i + 4]), output(h, operands[7 * i + 5])
            stacked(h, operands[7 * i + 4], operands[7 * i + 5], operands[7 * i + 5], gate, up, up, 2, tasks)
            for b in range(gate.shape[0]):
                for j in range(gate.shape[1]):
                    g = gate[b, j]
                    gate[b, j] = g / (np.float32(1.0) + np.exp(-g)) * up[b, j]
            x += product(gate, operands[7 * i + 6], tasks)
        rms_norm_rows(x, norm_final, eps, out)

    return llama_step
