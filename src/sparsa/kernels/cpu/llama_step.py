"""One single-token decode step of a Llama model in one compiled call (numba): every layer and
the output head, with no Python between the ``7 x layers + 1`` matrix products.

At a single token a projection takes a few to a hundred microseconds of arithmetic, so the
per-call cost of going through Python, torch and the numba dispatcher (some 15-40 us per
projection, plus the norms, residual adds and attention glue between them) was a third of
the step. This step runs, per layer and for every sequence of the batch::

    h = rms_norm(x) * w_in;  q, k, v = h Wq^T, h Wk^T, h Wv^T
    x += attention(rotary(q), rotary(k) -> cache, v -> cache) Wo^T          (decode_attention)
    h = rms_norm(x) * w_post;  x += (silu(h Wg^T) * h Wu^T) Wd^T

then ``logits = (rms_norm(x) * w_final) W_head^T``. Each product is whatever compiled kernel
the weight's format has (the dispatcher's ``step`` form: SpQR, Quant, Bitmap, ...; dense fp32
weights take :func:`sparsa.kernels.cpu.dense.dense_rows`), in any mix: a *kernel table*
gives each product a kind (one per distinct kernel and operand type) and its operand's place
in that kind's list, and a generated ``product`` function branches on the kind. Every
buffer is allocated once per model (:class:`StepBuffers`). The reference is
:class:`sparsa.nn.lean_decode.LeanLlama`'s per-module path.
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
from numba.typed import List

from sparsa.kernels.cpu.decode_attention import rotary_attention_step

PRODUCTS_PER_LAYER = 7  # q, k, v, o, gate, up, down


@dataclass(frozen=True)
class KernelTable:
    """The products of a step as kinds and operands (built by :func:`kernel_table`)."""

    kernels: tuple  # one compiled kernel per kind
    operands: tuple  # per kind, a typed List of its operand tuples
    kinds: np.ndarray  # [products] int64, each product's kind (layer-major, q .. down, the head last)
    index: np.ndarray  # [products] int64, its operand's place in that kind's list


def kernel_table(products: list[tuple]) -> KernelTable:
    """Group ``[(kernel, operand)]`` (in step order) by kernel and operand type: products of one
    kind share a compiled call site, so any mix of formats compiles once per mix."""
    keys: dict = {}
    lists: list[List] = []
    kinds, index = [], []
    for kernel, operand in products:
        key = (kernel, numba.typeof(operand))
        if key not in keys:
            keys[key] = len(lists)
            lists.append(List())
        kind = keys[key]
        kinds.append(kind)
        index.append(len(lists[kind]))
        lists[kind].append(operand)
    return KernelTable(tuple(kernel for kernel, _ in keys), tuple(lists), np.array(kinds, np.int64),
                       np.array(index, np.int64))


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


@numba.njit(fastmath=True, cache=True)
def silu_times(gate, up):  # pragma: no cover - compiled
    """gate = silu(gate) * up, in place ([B, I] fp32)."""
    for b in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[b, j]
            gate[b, j] = g / (np.float32(1.0) + np.exp(-g)) * up[b, j]


def product_source(kinds: int) -> str:
    """Source of ``product(kind, index, x, y, operands, tasks)``: ``y = x W^T`` by kernel ``k<kind>``."""
    lines = ["def product(kind, index, x, y, operands, tasks):"]
    for kind in range(kinds):
        lines += [f"    {'if' if kind == 0 else 'elif'} kind == {kind}:",
                  f"        k{kind}(x, *operands[{kind}][index], y, tasks)"]
    return "\n".join(lines) + "\n"


@functools.cache
def compiled_step(kernels: tuple):
    """The step for a kernel table's ``kernels`` (compiled once per distinct tuple)."""
    namespace = {f"k{kind}": kernel for kind, kernel in enumerate(kernels)}
    exec(product_source(len(kernels)), namespace)  # noqa: S102 - generated from a fixed template
    product = numba.njit(namespace["product"])

    @numba.njit
    def llama_step(x, operands, kinds, index, norm_in, norm_post, norm_final, eps, k_cache, v_cache, cos, sin, pos,
                   buffers, logits, tasks):  # pragma: no cover - compiled
        """Advance ``x [B, D]`` (embedded tokens at position ``pos``) through every layer, filling the
        caches [layers, B, kv_heads, L, hd]; ``logits [B, vocab]`` = the head's output."""
        h, q, k, v, attended, delta, gate, up = buffers
        for i in range(norm_in.shape[0]):
            at = PRODUCTS_PER_LAYER * i
            rms_norm_rows(x, norm_in[i], eps, h)
            product(kinds[at], index[at], h, q, operands, tasks)
            product(kinds[at + 1], index[at + 1], h, k, operands, tasks)
            product(kinds[at + 2], index[at + 2], h, v, operands, tasks)
            rotary_attention_step(q, k, v, cos, sin, k_cache[i], v_cache[i], pos, attended)
            product(kinds[at + 3], index[at + 3], attended, delta, operands, tasks)
            x += delta
            rms_norm_rows(x, norm_post[i], eps, h)
            product(kinds[at + 4], index[at + 4], h, gate, operands, tasks)
            product(kinds[at + 5], index[at + 5], h, up, operands, tasks)
            silu_times(gate, up)
            product(kinds[at + 6], index[at + 6], gate, delta, operands, tasks)
            x += delta
        rms_norm_rows(x, norm_final, eps, h)
        head = kinds.shape[0] - 1
        product(kinds[head], index[head], h, logits, operands, tasks)

    return llama_step


@dataclass(frozen=True)
class StepBuffers:
    """Activations of one step, [B, width] fp32 each, allocated once per model and batch."""

    h: np.ndarray  # normed hidden state [B, D]
    q: np.ndarray  # [B, heads * hd]
    k: np.ndarray  # [B, kv_heads * hd]
    v: np.ndarray  # [B, kv_heads * hd]
    attended: np.ndarray  # [B, heads * hd]
    delta: np.ndarray  # a residual branch's output [B, D]
    gate: np.ndarray  # [B, I]
    up: np.ndarray  # [B, I]

    @classmethod
    def allocate(cls, batch: int, hidden: int, q_width: int, kv_width: int, intermediate: int) -> "StepBuffers":
        widths = (hidden, q_width, kv_width, kv_width, q_width, hidden, intermediate, intermediate)
        return cls(*(np.zeros((batch, w), np.float32) for w in widths))

    def as_tuple(self) -> tuple:
        return (self.h, self.q, self.k, self.v, self.attended, self.delta, self.gate, self.up)
