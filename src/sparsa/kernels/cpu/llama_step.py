"""One single-token decode step of a Llama model in one compiled call (numba): every layer and
the output head, with no Python between the ``7 x layers + 1`` matrix products.

At a single token a projection takes a few to a hundred microseconds of arithmetic, so the
per-call cost of going through Python, torch and the numba dispatcher (some 15-40 us per
projection, plus the norms, residual adds and attention glue between them) was a third of
the step. This step runs, per layer and for every sequence of the batch::

    h = rms_norm(x) * w_in;  q, k, v = h Wq^T, h Wk^T, h Wv^T
    x += attention(rotary(q), rotary(k) -> cache, v -> cache) Wo^T          (decode_attention)
    h = rms_norm(x) * w_post;  x += (silu(h Wg^T) * h Wu^T) Wd^T

then ``logits = (rms_norm(x) * w_final) W_head^T``. Each product is whatever kernel the
weight's format has, as a :class:`~sparsa.kernels.cpu.calls.RowKernel` (the dispatcher's
``step`` form: SpQR, Quant, Bitmap, BlockSparse; dense fp32 and bf16 weights take
:data:`sparsa.kernels.cpu.dense.DENSE`), in any mix: a *kernel table* gives each product a
kind (one per distinct kernel and entry type), its entry's place in that kind's list and its
own scratch, and generated ``prepare`` and ``rows`` functions branch on the kind.

The whole step is one parallel region, as llama.cpp's thread pool runs a graph: numba's
fork and join cost about 1.2 us each and the threads' caches went cold between them, 211
times a SmolLM2 token. Every thread walks the same phases; a phase's tasks are taken from an
atomic counter and the phase ends when its "done" counter is full
(:mod:`sparsa.kernels.cpu.atomics`). Per layer: the norm and the q k v activations (one task),
the q k v rows (chunks of units of all three, :class:`Schedule`), the attention (one task per
sequence and kv head), the o activations, the o rows, the norm and the gate and up
activations, their rows, the SiLU and the down activations, the down rows. A thread that
finds no task left waits, so one thread alone finishes the step too, and the bytes do not
depend on how the chunks fell. Every function the threads run is compiled with numba's
``error_model="numpy"`` (IEEE division, as the kernels here all are): a Python-style
``ZeroDivisionError`` would end one thread's walk and leave the others waiting for its tasks. Every buffer is allocated once per model
(:class:`StepBuffers`). The reference is :class:`sparsa.nn.lean_decode.LeanLlama`'s
per-module path.
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np
from numba.typed import List

from sparsa.kernels.cpu.atomics import take, wait_for
from sparsa.kernels.cpu.decode_attention import attend_group
from sparsa.kernels.cpu.fast_exp import exp32

PRODUCTS_PER_LAYER = 7  # q, k, v, o, gate, up, down
CHUNKS_PER_THREAD = 4  # runs of units a rows phase is cut into, per thread: the threads even out the uneven ones
ROWS_PHASES = ((0, 1, 2), (3,), (4, 5), (6,))
PHASES_PER_LAYER = 9  # per rows phase a task alone (norm, activations) and the rows; and the attention


@dataclass(frozen=True)
class KernelTable:
    """The products of a step as kinds and entries (built by :func:`kernel_table`)."""

    kernels: tuple  # one RowKernel per kind
    entries: tuple  # per kind, a typed List of its products' (operand, scratch) tuples
    kinds: np.ndarray  # [products] int64, each product's kind (layer-major, q .. down, the head last)
    index: np.ndarray  # [products] int64, its entry's place in that kind's list
    units: np.ndarray  # [products] int64, units of work of its output
    prepare_kinds: np.ndarray  # [products] int64, its kind, or -1 where an earlier product prepares its scratch


def same_input(product: int, products: int) -> list[int]:
    """The earlier products of the step that read the same activations as ``product`` (of ``products``):
    those of its rows phase (:data:`ROWS_PHASES`) before it."""
    if product == products - 1:
        return []
    layer, slot = divmod(product, PRODUCTS_PER_LAYER)
    group = next(g for g in ROWS_PHASES if slot in g)
    return [PRODUCTS_PER_LAYER * layer + j for j in group if j < slot]


def kernel_table(products: list[tuple], tokens: int) -> KernelTable:
    """Group ``[(RowKernel, operand, out_features)]`` (in step order) by kernel and entry type (products
    of one kind share a compiled call site, so any mix of formats compiles once per mix), each product
    with scratch for ``tokens`` tokens: its own, or that of an earlier product with the same input,
    kernel and :attr:`~sparsa.kernels.cpu.calls.RowKernel.prepare_reads` (SpQR's q, k and v, and gate
    and up, share one activation order), which then prepares it once for both."""
    keys: dict = {}
    lists: list[List] = []
    kinds, index, units, prepare_kinds, scratches = [], [], [], [], []
    for p, (kernel, operand, out_features) in enumerate(products):
        source = next((q for q in same_input(p, len(products)) if products[q][0] is kernel and all(
            np.array_equal(products[q][1][i], operand[i]) for i in kernel.prepare_reads)), None)
        scratch = kernel.scratch_for(operand, tokens) if source is None else scratches[source]
        entry = (operand, scratch)
        key = (kernel, numba.typeof(entry))
        if key not in keys:
            keys[key] = len(lists)
            lists.append(List())
        kind = keys[key]
        kinds.append(kind)
        prepare_kinds.append(kind if source is None else -1)
        index.append(len(lists[kind]))
        units.append(kernel.units(out_features))
        scratches.append(scratch)
        lists[kind].append(entry)
    return KernelTable(tuple(kernel for kernel, _ in keys), tuple(lists), *(
        np.array(a, np.int64) for a in (kinds, index, units, prepare_kinds)))


@dataclass(frozen=True)
class Schedule:
    """The rows phases of a step cut into chunks: phase ``r`` is chunks ``starts[r] .. starts[r + 1]``, chunk
    ``c`` units ``first[c] .. last[c]`` of product ``product[c]`` (phases: per layer q k v, o, gate up, down;
    then the head)."""

    product: np.ndarray
    first: np.ndarray
    last: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, units: np.ndarray, threads: int) -> "Schedule":
        """Each phase in about ``CHUNKS_PER_THREAD * threads`` chunks, shared out by units."""
        layers = (len(units) - 1) // PRODUCTS_PER_LAYER
        phases = [[PRODUCTS_PER_LAYER * i + j for j in group] for i in range(layers) for group in ROWS_PHASES]
        phases.append([len(units) - 1])
        product, first, last, starts = [], [], [], [0]
        for members in phases:
            total = sum(int(units[p]) for p in members)
            for p in members:
                count = int(units[p])
                chunks = max(1, min(count, round(CHUNKS_PER_THREAD * threads * count / total)))
                for c in range(chunks):
                    product.append(p)
                    first.append(c * count // chunks)
                    last.append((c + 1) * count // chunks)
            starts.append(len(product))
        return cls(*(np.array(a, np.int64) for a in (product, first, last, starts)))

    def as_tuple(self) -> tuple:
        return (self.product, self.first, self.last, self.starts)


@numba.njit(fastmath=True, cache=True, error_model="numpy")
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


@numba.njit(fastmath=True, error_model="numpy", cache=True)
def silu_times(gate, up):  # pragma: no cover - compiled
    """gate = silu(gate) * up, in place ([B, I] fp32)."""
    for b in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[b, j]
            gate[b, j] = g / (np.float32(1.0) + exp32(-g)) * up[b, j]


def dispatch_source(kinds: int) -> str:
    """Source of ``prepare(kind, index, x, entries)`` and ``rows(kind, index, x, y, entries, first, last)``:
    kind ``k``'s RowKernel functions ``p<k>`` and ``r<k>`` on entry ``entries[k][index]``."""
    lines = ["def prepare(kind, index, x, entries):"]
    for kind in range(kinds):
        lines += [f"    {'if' if kind == 0 else 'elif'} kind == {kind}:",
                  f"        entry = entries[{kind}][index]",
                  f"        p{kind}(x, entry[0], entry[1])"]
    lines += ["", "", "def rows(kind, index, x, y, entries, first, last):"]
    for kind in range(kinds):
        lines += [f"    {'if' if kind == 0 else 'elif'} kind == {kind}:",
                  f"        entry = entries[{kind}][index]",
                  f"        r{kind}(x, entry[0], entry[1], y, first, last)"]
    return "\n".join(lines) + "\n"


INPUT_OF = (0, 0, 0, 4, 0, 0, 6)  # per product of a layer, its input among the buffers (h, attended, gate)
OUTPUT_OF = (1, 2, 3, 5, 6, 7, 5)  # and its output (q, k, v, delta, gate, up, delta)


@numba.njit(error_model="numpy")
def product_buffers(product, layers, buffers, logits):  # pragma: no cover - compiled
    """(input, output) of product ``product`` of the step (:data:`INPUT_OF`, :data:`OUTPUT_OF`; ``buffers``
    as :meth:`StepBuffers.as_tuple`); the head (the last) reads ``h`` into ``logits``."""
    if product == PRODUCTS_PER_LAYER * layers:
        return buffers[0], logits
    slot = product % PRODUCTS_PER_LAYER
    return buffers[INPUT_OF[slot]], buffers[OUTPUT_OF[slot]]


@functools.cache
def compiled_step(kernels: tuple):
    """The step for a kernel table's ``kernels`` (compiled once per distinct tuple)."""
    namespace = {f"p{kind}": kernel.prepare for kind, kernel in enumerate(kernels)}
    namespace.update({f"r{kind}": kernel.rows for kind, kernel in enumerate(kernels)})
    exec(dispatch_source(len(kernels)), namespace)  # noqa: S102 - generated from a fixed template
    prepare, rows = (numba.njit(error_model="numpy")(namespace[name]) for name in ("prepare", "rows"))

    @numba.njit(error_model="numpy")
    def solo(stage, i, x, entries, prepare_kinds, index, norm_in, norm_post, norm_final, eps, buffers):  # pragma: no cover
        """The one task before rows phase ``stage`` of layer ``i`` (``i`` = layers: the head's): the
        residual add, norm and activations it needs (``prepare_kinds``: kind -1 prepares nothing)."""
        h, q, k, v, attended, delta, gate, up = buffers
        at = PRODUCTS_PER_LAYER * i
        if stage == 0:  # the residual of the last MLP, the norm, the q k v activations
            if i:
                x += delta
            rms_norm_rows(x, norm_in[i], eps, h)
            for j in range(3):
                prepare(prepare_kinds[at + j], index[at + j], h, entries)
        elif stage == 1:
            prepare(prepare_kinds[at + 3], index[at + 3], attended, entries)
        elif stage == 2:  # the attention's residual, the norm, the gate and up activations
            x += delta
            rms_norm_rows(x, norm_post[i], eps, h)
            prepare(prepare_kinds[at + 4], index[at + 4], h, entries)
            prepare(prepare_kinds[at + 5], index[at + 5], h, entries)
        elif stage == 3:
            silu_times(gate, up)
            prepare(prepare_kinds[at + 6], index[at + 6], gate, entries)
        else:
            x += delta
            rms_norm_rows(x, norm_final, eps, h)
            prepare(prepare_kinds[at], index[at], h, entries)

    @numba.njit(error_model="numpy")
    def rows_phase(counts, phase, r, schedule, entries, kinds, index, layers, buffers, logits):  # pragma: no cover
        """Take chunks of rows phase ``r`` until none is left, then wait for the others' chunks."""
        product, first, last, starts = schedule
        chunks = starts[r + 1] - starts[r]
        while True:
            c = take(counts, 2 * phase)
            if c >= chunks:
                break
            c += starts[r]
            p = product[c]
            x, y = product_buffers(p, layers, buffers, logits)
            rows(kinds[p], index[p], x, y, entries, first[c], last[c])
            take(counts, 2 * phase + 1)
        wait_for(counts, 2 * phase + 1, chunks)

    @numba.njit(error_model="numpy")
    def worker(x, entries, kinds, index, prepare_kinds, schedule, norm_in, norm_post, norm_final, eps, k_cache, v_cache, cos, sin,
               pos, buffers, logits, counts):  # pragma: no cover - compiled
        """One thread's walk through the step's phases (any number of threads, one included, finish it):
        per layer four times a task alone and a rows phase, the attention after the first; then the head's."""
        q, k, attended = buffers[1], buffers[2], buffers[4]
        layers = norm_in.shape[0]
        batch, kv_heads = x.shape[0], k.shape[1] // cos.shape[0]
        phase, r = 0, 0
        for i in range(layers + 1):
            for stage in range(4) if i < layers else range(4, 5):
                if take(counts, 2 * phase) == 0:
                    solo(stage, i, x, entries, prepare_kinds, index, norm_in, norm_post, norm_final, eps, buffers)
                    take(counts, 2 * phase + 1)
                wait_for(counts, 2 * phase + 1, 1)
                rows_phase(counts, phase + 1, r, schedule, entries, kinds, index, layers, buffers, logits)
                phase, r = phase + 2, r + 1
                if stage == 0:  # attention, one task per sequence and kv head
                    while True:
                        task = take(counts, 2 * phase)
                        if task >= batch * kv_heads:
                            break
                        attend_group(q, k, buffers[3], cos, sin, k_cache[i], v_cache[i], pos, attended,
                                     task // kv_heads, task % kv_heads)
                        take(counts, 2 * phase + 1)
                    wait_for(counts, 2 * phase + 1, batch * kv_heads)
                    phase += 1

    @numba.njit(parallel=True, error_model="numpy")
    def llama_step(x, entries, kinds, index, prepare_kinds, schedule, norm_in, norm_post, norm_final, eps, k_cache, v_cache, cos, sin,
                   pos, buffers, logits):  # pragma: no cover - compiled
        """Advance ``x [B, D]`` (embedded tokens at position ``pos``) through every layer, filling the
        caches [layers, B, kv_heads, L, hd]; ``logits [B, vocab]`` = the head's output. One parallel
        region: every thread walks the phases, taking tasks from each phase's counter."""
        threads = numba.get_num_threads()
        counts = np.zeros(2 * (PHASES_PER_LAYER * norm_in.shape[0] + 2), np.int64)
        for _ in numba.prange(threads):
            worker(x, entries, kinds, index, prepare_kinds, schedule, norm_in, norm_post, norm_final, eps, k_cache, v_cache, cos,
                   sin, pos, buffers, logits, counts)

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
