"""The AVX-512 inner loops of the fp32 block-sparse kernel (LLVM IR intrinsics: numba keeps a
vectorized accumulator in memory and chains every FMA of a block on it, which left the
kernel latency-bound at half its load throughput).

The tokens-in-lanes steps read activations as 16-token chunks ``xc [K, 16]`` (one 64-byte line per input
column, from :func:`sparsa.kernels.cpu.block_sparse.load_chunk`) and loop over one block
row's blocks ``b0 .. b1`` with the accumulators in registers:

* :func:`row_block_step` (``1 x C`` blocks): tokens in the lanes. Block ``b`` adds
  ``values[b, j] * xc[col[b] * C + j, :]`` for its ``C`` columns, the FMAs spread over up to
  four partial sums so consecutive ones do not wait on each other (FMA latency 4 cycles, two
  per cycle); one 16-token row of the output tile at the end.
* :func:`column_block_step` (``16 x 1`` slices of ``R x 1`` blocks): rows in the lanes. Block
  ``b``'s 16 values (one vector) meet each of the 16 tokens' activation at column ``col[b]``,
  broadcast: 17 loads per 16 FMAs, 16 independent accumulators, and each token's 16 outputs
  are one contiguous store into ``Y``, no transpose.

:func:`token_rows_step` is the weights-in-lanes order's (few tokens): one output row, each 16
weights loaded once and met by up to 8 tokens' activations, the sums in registers.

Intrinsics do no bounds checks: callers keep every access inside the arrays.
"""

import functools

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsa.kernels.cpu.tiles import _F32, _V, _fma, _splat

LANES = 16  # tokens per activation chunk, and rows per column-block step
PARTIALS = 4  # independent accumulators per row in the row-block step
_I64 = ir.IntType(64)
_ZERO = ir.Constant(_V[_F32], [0.0] * LANES)


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _wide(builder, value):
    """An integer argument as i64 (numba passes int16/int32 array elements and intp indices)."""
    return builder.sext(value, _I64) if value.type.width < 64 else value


def _vector_at(builder, data, index):
    """``&data[index]`` as a pointer to 16 fp32."""
    return builder.bitcast(builder.gep(data, [index]), _V[_F32].as_pointer())


@functools.cache
def row_block_step(C: int):
    """The step for ``1 x C`` blocks, compiled per ``C``:
    ``tile(tile, tile_at, xc, x_at, values, col, b0, b1)`` sets
    ``tile[tile_at + l] = sum_{b0 <= b < b1} sum_{j < C} values[b * C + j] * xc[x_at + (col[b] * C + j) * 16 + l]``
    for the 16 lanes ``l``."""
    partials = min(PARTIALS, C)

    @intrinsic
    def step(typingctx, tile, tile_at, xc, x_at, values, col, b0, b1):
        def codegen(context, builder, sig, args):
            tile_a, tile_i, xc_a, x_i, values_a, col_a, b0_i, b1_i = args
            ta = sig.args
            tile_d, xc_d = _data(context, builder, ta[0], tile_a), _data(context, builder, ta[2], xc_a)
            values_d, col_d = _data(context, builder, ta[4], values_a), _data(context, builder, ta[5], col_a)
            accs = [cgutils.alloca_once_value(builder, _ZERO) for _ in range(partials)]
            with cgutils.for_range(builder, _wide(builder, b1_i), start=_wide(builder, b0_i)) as loop:
                b = loop.index
                column = _wide(builder, builder.load(builder.gep(col_d, [b])))
                base = builder.add(_wide(builder, x_i), builder.mul(column, _I64(C * LANES)))
                for j in range(C):
                    w = builder.load(builder.gep(values_d, [builder.add(builder.mul(b, _I64(C)), _I64(j))]))
                    x = builder.load(_vector_at(builder, xc_d, builder.add(base, _I64(j * LANES))), align=4)
                    acc = accs[j % partials]
                    builder.store(_fma(builder, _splat(builder, w), x, builder.load(acc)), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.fadd(total, builder.load(acc))
            builder.store(total, _vector_at(builder, tile_d, _wide(builder, tile_i)), align=4)
            return context.get_dummy_value()

        return types.void(tile, tile_at, xc, x_at, values, col, b0, b1), codegen

    return step


@intrinsic
def column_block_step(typingctx, y, y_at, y_stride, count, xc, x_at, values, value_at, value_stride, col, b0, b1):
    """For tokens ``i < count`` (at most 16) sets ``y[y_at + i * y_stride + r] = sum_{b0 <= b < b1}
    values[b * value_stride + value_at + r] * xc[x_at + col[b] * 16 + i]`` for the 16 rows ``r``."""

    def codegen(context, builder, sig, args):
        y_a, y_i, y_s, count_i, xc_a, x_i, values_a, v_i, v_s, col_a, b0_i, b1_i = args
        ta = sig.args
        y_d, xc_d = _data(context, builder, ta[0], y_a), _data(context, builder, ta[4], xc_a)
        values_d, col_d = _data(context, builder, ta[6], values_a), _data(context, builder, ta[9], col_a)
        accs = [cgutils.alloca_once_value(builder, _ZERO) for _ in range(LANES)]
        v_at, v_stride = _wide(builder, v_i), _wide(builder, v_s)
        with cgutils.for_range(builder, _wide(builder, b1_i), start=_wide(builder, b0_i)) as loop:
            b = loop.index
            column = _wide(builder, builder.load(builder.gep(col_d, [b])))
            base = builder.add(_wide(builder, x_i), builder.mul(column, _I64(LANES)))
            w = builder.load(_vector_at(builder, values_d, builder.add(builder.mul(b, v_stride), v_at)), align=4)
            for i, acc in enumerate(accs):
                x = builder.load(builder.gep(xc_d, [builder.add(base, _I64(i))]))
                builder.store(_fma(builder, w, _splat(builder, x), builder.load(acc)), acc)
        y_at_, y_stride_, count_ = (_wide(builder, a) for a in (y_i, y_s, count_i))
        for i, acc in enumerate(accs):
            with builder.if_then(builder.icmp_signed("<", _I64(i), count_)):
                at = builder.add(y_at_, builder.mul(y_stride_, _I64(i)))
                builder.store(builder.load(acc), _vector_at(builder, y_d, at), align=4)
        return context.get_dummy_value()

    return types.void(y, y_at, y_stride, count, xc, x_at, values, value_at, value_stride, col, b0, b1), codegen


def _sum16(builder, vec):
    """The 16 lanes of ``vec`` summed to one fp32 (halving: 8 + 8, 4 + 4, 2 + 2, 1 + 1)."""
    width = LANES
    while width > 1:
        width //= 2
        low = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width))))
        high = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                            list(range(width, 2 * width))))
        vec = builder.fadd(low, high)
    return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))


@functools.cache
def token_rows_step(C: int, T: int):
    """One output row of a block row of ``R x C`` blocks (``C`` a multiple of 16) for ``T`` tokens,
    weights in the lanes, compiled per ``(C, T)``: ``step(y, y_at, y_stride, x, x_at, x_stride, values,
    value_at, value_stride, col, b0, b1)`` sets, for ``t < T``,
    ``y[y_at + t * y_stride] = sum_{b0 <= b < b1} sum_{j < C} values[b * value_stride + value_at + j]
    * x[x_at + t * x_stride + col[b] * C + j]``.

    Each 16 weights are loaded once and meet every token's 16 activations (one FMA per activation
    load), ``T`` accumulators in registers; at one token the blocks alternate over ``PARTIALS``
    accumulators, so consecutive FMAs do not wait on each other (more tokens already interleave).
    One horizontal sum per token at the end."""
    vectors, partials = C // LANES, (PARTIALS if T == 1 else 1)

    @intrinsic
    def step(typingctx, y, y_at, y_stride, x, x_at, x_stride, values, value_at, value_stride, col, b0, b1):
        def codegen(context, builder, sig, args):
            y_a, y_i, y_s, x_a, x_i, x_s, values_a, v_i, v_s, col_a, b0_i, b1_i = args
            ta = sig.args
            y_d, x_d = _data(context, builder, ta[0], y_a), _data(context, builder, ta[3], x_a)
            values_d, col_d = _data(context, builder, ta[6], values_a), _data(context, builder, ta[9], col_a)
            x_at_, x_stride_ = _wide(builder, x_i), _wide(builder, x_s)
            v_at, v_stride = _wide(builder, v_i), _wide(builder, v_s)
            accs = [[cgutils.alloca_once_value(builder, _ZERO) for _ in range(partials)] for _ in range(T)]

            def block(b, p):  # block b into every token's accumulator p
                column = _wide(builder, builder.load(builder.gep(col_d, [b])))
                x_base = builder.add(x_at_, builder.mul(column, _I64(C)))
                w_base = builder.add(builder.mul(b, v_stride), v_at)
                for v in range(vectors):
                    w = builder.load(_vector_at(builder, values_d, builder.add(w_base, _I64(v * LANES))), align=4)
                    for t in range(T):
                        at = builder.add(x_base, builder.add(builder.mul(x_stride_, _I64(t)), _I64(v * LANES)))
                        x = builder.load(_vector_at(builder, x_d, at), align=4)
                        builder.store(_fma(builder, w, x, builder.load(accs[t][p])), accs[t][p])

            start, stop = _wide(builder, b0_i), _wide(builder, b1_i)
            count = builder.sub(stop, start)
            whole = builder.add(start, builder.sub(count, builder.srem(count, _I64(partials))))
            with cgutils.for_range_slice(builder, start, whole, _I64(partials), inc=True) as (b, _):
                for p in range(partials):
                    block(builder.add(b, _I64(p)), p)
            with cgutils.for_range(builder, stop, start=whole) as loop:
                block(loop.index, 0)
            y_at_, y_stride_ = _wide(builder, y_i), _wide(builder, y_s)
            for t in range(T):
                total = builder.load(accs[t][0])
                for acc in accs[t][1:]:
                    total = builder.fadd(total, builder.load(acc))
                at = builder.add(y_at_, builder.mul(y_stride_, _I64(t)))
                builder.store(_sum16(builder, total), builder.gep(y_d, [at]))
            return context.get_dummy_value()

        return types.void(y, y_at, y_stride, x, x_at, x_stride, values, value_at, value_stride, col, b0, b1), codegen

    return step
