"""Quant ``Y = X Wᵀ`` on int8 activations (AVX2 ``vpmaddubsw``): the decode kernel of 4-bit g32k Quant.

llama.cpp's CPU decode multiplies 4-bit weights by activations quantized to int8 per block of
32 (its Q8 activations), as integer dot products: 32 multiply-adds in two instructions, against
the fp32 tile kernel's one fused multiply-add per 8 after unpacking and converting every code.
This is that scheme for ``Quant`` (``w = q * s + m``, codes of at most 4 bits, groups of a
multiple of 32 columns)::

    x[n, block b] ≈ d[n, b] * xq[n, b],   d = max|x| / 127 over the 32 columns, xq int8 (rounded)
    y[n, r] = sum_b  s[r, g(b)] * d[n, b] * (q[r, b] · xq[n, b])  +  m[r, g(b)] * sum(x[n, b])

The integer dot products are exact (|q · xq| <= 32 * 15 * 127); the only approximation is the
activations' rounding, at most ``d / 2`` per activation, as in llama.cpp. The minimum's term uses
the exact fp32 block sum. :func:`q8_reference` is the same arithmetic in torch. A symmetric weight
(GGUF Q4_0's grid) stores no minimum; the step computes it, ``m = -zero * s``, and reads
nothing but the scale.

Layout (:func:`row_codes`): rows in quads; per quad, block by block, the four rows' 16 bytes
(byte ``j`` holds column ``j`` in the low nibble and column ``16 + j`` in the high one), so a
quad's block is one 64-byte cache line; the fp16 scale and minimum per (row, group) in the same
quad order. One step (:func:`quad_rows`, an LLVM IR intrinsic) runs a quad of rows for one token
over every block, the four accumulators in registers, each block requesting the codes
``PREFETCH_BYTES`` ahead: SmolLM2 quant-4 sym's 210 layer products, streamed from memory in
turn, took 0.96x the time of the same kernel prefetching nothing ahead (25 alternating rounds in
one process, 1 and 2 threads, Zen 4).
"""

import functools

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsa.kernels.cpu.calls import RowKernel
from sparsa.kernels.cpu.tiles import PREFETCH_BYTES, _pointer, _prefetch  # shared by the IR steps

BLOCK = 32  # activation columns per int8 scale
QUAD = 4  # rows per step
LEVELS = 127  # |xq| <= LEVELS

HAS_AVX2 = bool(llvm.get_host_cpu_features().get("avx2", False))

_F32, _I8, _I16, _I32 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V4F, _V8F, _V16I8, _V32I8, _V16I16, _V8I32 = (ir.VectorType(_F32, 4), ir.VectorType(_F32, 8), ir.VectorType(_I8, 16),
                                               ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8))


def row_codes(q: torch.Tensor) -> torch.Tensor:
    """Codes ``q: [out, blocks * 32]`` (< 16) -> [quads * blocks * 4 * 16] uint8 in the quad layout
    (rows past ``out`` are 0)."""
    out_features, width = q.shape
    blocks, quads = width // BLOCK, -(-out_features // QUAD)
    q = torch.cat([q.to(torch.uint8), q.new_zeros(quads * QUAD - out_features, width, dtype=torch.uint8)])
    q = q.reshape(quads, QUAD, blocks, 2, BLOCK // 2)
    packed = q[:, :, :, 0] | (q[:, :, :, 1] << 4)  # [quads, 4, blocks, 16]
    return packed.permute(0, 2, 1, 3).contiguous().reshape(-1)


def quad_stats(stat: torch.Tensor) -> torch.Tensor:
    """[out, G] fp16 -> [quads * G * 4] int16 (the fp16 bits), quad order; rows past ``out`` are 0."""
    out_features, groups = stat.shape
    quads = -(-out_features // QUAD)
    bits = torch.cat([stat.view(torch.int16), stat.new_zeros(quads * QUAD - out_features, groups).view(torch.int16)])
    return bits.reshape(quads, QUAD, groups).transpose(1, 2).contiguous().reshape(-1)


def q8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x: [N, blocks * 32]`` fp32 -> (xq [N, blocks * 32] int8, d [N, blocks], block sums [N, blocks])
    as the kernel forms them (an all-zero block gets d = 1)."""
    blocks = x.reshape(x.shape[0], x.shape[1] // BLOCK, BLOCK)
    top = blocks.abs().amax(-1)
    d = torch.where(top / LEVELS > 0, top / LEVELS, torch.ones_like(top))
    xq = torch.round(blocks * (1 / d)[..., None]).clamp(-LEVELS, LEVELS).to(torch.int8)
    return xq.reshape(x.shape), d, blocks.sum(-1)


def q8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                 group_size: int) -> torch.Tensor:
    """The kernel's arithmetic in torch: ``x [N, K]`` fp32, codes ``q [out, K]``, fp16 ``scale`` and
    ``minimum`` [out, K / group_size] -> [N, out] fp32 (K a multiple of ``group_size``, itself of 32)."""
    xq, d, sums = q8_activations(x)
    per = group_size // BLOCK
    blocks = x.shape[1] // BLOCK
    dots = torch.einsum("nbk,obk->nob", xq.reshape(x.shape[0], blocks, BLOCK).int().double(),
                        q.reshape(q.shape[0], blocks, BLOCK).double())  # exact integers
    s = scale.float().repeat_interleave(per, 1)[None]
    m = minimum.float().repeat_interleave(per, 1)[None]
    return (s * d[:, None] * dots.float() + m * sums[:, None]).sum(-1)


def _halves4(context, builder, array_type, array, index):
    """Four fp16 bit patterns at ``array[index]`` widened to a 4-lane fp32 vector (exact)."""
    bits = builder.load(_pointer(context, builder, array_type, array, index, ir.VectorType(_I16, QUAD)), align=2)
    return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), QUAD)), _V4F)


def _splat(builder, scalar, lanes: int):
    """A ``lanes``-lane fp32 vector of ``scalar``."""
    vtype = ir.VectorType(_F32, lanes)
    vec = builder.insert_element(ir.Constant(vtype, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(vtype, ir.Undefined), ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


@functools.cache
def quad_rows(blocks_per_group: int, zero: int):
    """The step for groups of ``32 * blocks_per_group`` columns. Call (element offsets into 1-D arrays)::

        quad_rows(codes, code_at, scale, minimum, stat_at, xq, x_at, d, sums, block_at, blocks, out)

    ``codes`` uint8 (the quad's blocks at ``code_at``), ``scale``/``minimum`` int16 fp16 bits (the
    quad's groups at ``stat_at``), ``xq`` int8 (the token's blocks at ``x_at``), ``d``/``sums`` fp32
    (at ``block_at``), ``blocks`` the row's block count; writes ``out[0:4]`` (fp32), the quad's outputs.
    ``zero > 0``: a symmetric weight, ``minimum = -zero * scale`` (``minimum`` is not read).
    """

    def codegen(context, builder, sig, args):
        codes, code_at, scale, minimum, stat_at, xq, x_at, d, sums, block_at, blocks, out = args
        ta = sig.args
        i64 = code_at.type
        acc = [cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8)) for _ in range(QUAD)]
        macc = cgutils.alloca_once_value(builder, ir.Constant(_V4F, [0.0] * QUAD))  # the quad's minimum terms
        fifteen, four = ir.Constant(_V16I8, [15] * 16), ir.Constant(_V16I8, [4] * 16)
        ones = ir.Constant(_V16I16, [1] * 16)
        both = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
        with cgutils.for_range(builder, blocks) as loop:
            b = loop.index
            xv = builder.load(_pointer(context, builder, ta[5], xq, builder.add(x_at, builder.mul(b, ir.Constant(i64, BLOCK))),
                                   _V32I8), align=1)
            db = builder.load(_pointer(context, builder, ta[7], d, builder.add(block_at, b), _F32))
            sb = builder.load(_pointer(context, builder, ta[8], sums, builder.add(block_at, b), _F32))
            g = builder.udiv(b, ir.Constant(i64, blocks_per_group)) if blocks_per_group > 1 else b
            base = builder.add(code_at, builder.mul(b, ir.Constant(i64, QUAD * BLOCK // 2)))
            _prefetch(context, builder, ta[0], codes, builder.add(base, ir.Constant(i64, PREFETCH_BYTES)))
            sbase = builder.add(stat_at, builder.mul(g, ir.Constant(i64, QUAD)))
            s_raw = _halves4(context, builder, ta[2], scale, sbase)
            s4 = builder.fmul(s_raw, _splat(builder, db, 4))  # s * d per row
            if zero:  # exact: a power of two times an fp16 value
                m4 = builder.fmul(s_raw, ir.Constant(_V4F, [float(-zero)] * QUAD))
            else:
                m4 = _halves4(context, builder, ta[3], minimum, sbase)
            builder.store(_call(builder, "llvm.fma.v4f32", _V4F, [m4, _splat(builder, sb, 4), builder.load(macc)]), macc)
            for i in range(QUAD):
                raw = builder.load(_pointer(context, builder, ta[0], codes, builder.add(base, ir.Constant(i64, 16 * i)),
                                        _V16I8), align=1)
                q = builder.shuffle_vector(builder.and_(raw, fifteen), builder.lshr(raw, four), both)
                pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [q, xv])
                dot = builder.sitofp(_call(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [pairs, ones]), _V8F)
                row_scale = builder.shuffle_vector(s4, ir.Constant(_V4F, ir.Undefined),
                                                   ir.Constant(ir.VectorType(_I32, 8), [i] * 8))
                builder.store(_call(builder, "llvm.fma.v8f32", _V8F, [dot, row_scale, builder.load(acc[i])]), acc[i])
        out_data = context.make_array(ta[11])(context, builder, out).data
        minimums = builder.load(macc)
        for i in range(QUAD):
            v = builder.load(acc[i])
            total = builder.extract_element(minimums, ir.Constant(_I32, i))
            for lane in range(8):
                total = builder.fadd(total, builder.extract_element(v, ir.Constant(_I32, lane)))
            builder.store(total, builder.gep(out_data, [ir.Constant(i64, i)]))
        return context.get_dummy_value()

    @intrinsic
    def step(typingctx, codes, code_at, scale, minimum, stat_at, xq, x_at, d, sums, block_at, blocks, out):
        return types.void(codes, code_at, scale, minimum, stat_at, xq, x_at, d, sums, block_at, blocks, out), codegen

    return step


@numba.njit(fastmath=True, error_model="numpy")
def quantize_blocks(x, width, xq, d, sums):  # pragma: no cover - compiled
    """``x [N, K]`` -> ``xq`` (N rows of ``width >= K`` int8, zeros past K), ``d`` and ``sums`` (N rows of
    ``width / 32``), as :func:`q8_activations`."""
    n_tokens, in_features = x.shape
    blocks = width // BLOCK
    for n in range(n_tokens):
        for b in range(blocks):
            top, total = np.float32(0.0), np.float32(0.0)
            for k in range(b * BLOCK, min(in_features, (b + 1) * BLOCK)):
                top = max(top, abs(x[n, k]))
                total += x[n, k]
            step = top / np.float32(LEVELS)
            step = step if step > 0 else np.float32(1.0)  # an all-zero (or all-denormal) block
            inv = np.float32(1.0) / step
            for k in range(b * BLOCK, (b + 1) * BLOCK):
                v = x[n, k] * inv if k < in_features else np.float32(0.0)
                xq[n * width + k] = np.int8(min(max(np.rint(v), -LEVELS), LEVELS))
            d[n * blocks + b], sums[n * blocks + b] = step, total


def compiled(blocks_per_group: int, zero: int = 0) -> RowKernel:
    """The kernel for groups of ``32 * blocks_per_group`` columns: units of a quad of rows;
    ``operand = (codes, scale, minimum, blocks)``, ``scratch = (xq, d, sums)`` (:func:`quantize_blocks`);
    ``zero > 0``: a symmetric weight (:func:`quad_rows`). One object per distinct kernel."""
    return _compiled(blocks_per_group, zero)


@functools.cache
def _compiled(blocks_per_group: int, zero: int) -> RowKernel:
    step = quad_rows(blocks_per_group, zero)

    @numba.njit(error_model="numpy")
    def prepare(x, operand, scratch):  # pragma: no cover - compiled
        xq, d, sums = scratch
        quantize_blocks(x, operand[3] * BLOCK, xq, d, sums)

    @numba.njit(fastmath=True, error_model="numpy")
    def rows(x, operand, scratch, y, first, last):  # pragma: no cover - compiled
        """Quads ``first .. last`` of y[N, M] = x W^T."""
        codes, scale, minimum, blocks = operand
        xq, d, sums = scratch
        n_tokens, out_features = y.shape
        width = blocks * BLOCK
        groups = blocks // blocks_per_group
        out = np.empty(QUAD, np.float32)
        for u in range(first, last):
            for n in range(n_tokens):
                step(codes, u * blocks * QUAD * (BLOCK // 2), scale, minimum, u * groups * QUAD, xq, n * width,
                     d, sums, n * blocks, blocks, out)
                for i in range(min(QUAD, out_features - u * QUAD)):
                    y[n, u * QUAD + i] = out[i]

    return RowKernel(prepare, rows, QUAD, scratch_for)


def scratch_for(operand: tuple, tokens: int) -> tuple:
    """``(xq, d, sums)`` for ``tokens`` tokens of a weight of ``operand[3]`` blocks a row."""
    blocks = operand[3]
    return (np.empty(tokens * blocks * BLOCK, np.int8), np.empty(tokens * blocks, np.float32),
            np.empty(tokens * blocks, np.float32))
