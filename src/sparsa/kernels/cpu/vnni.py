"""The AVX-512 VNNI step of the int8 4x1 block kernel (an LLVM IR intrinsic), and whether this
CPU has the instructions (:data:`HAS_VNNI`).

``vpdpbusd`` adds, in each of 16 int32 lanes, the dot product of four uint8 activations with
four int8 weights. In :func:`int8_block_row_step` a lane is a token and the four bytes are
four blocks of one block row (four input columns): the weight side, four codes of one output
row, is one broadcast int32; the activation side, each token's four column bytes, is built in
registers from four 16-byte column loads and two shuffles, and serves the block row's four
output rows. The accumulators stay in registers over the whole block row.

The intrinsic does no bounds checks: callers keep every access inside the arrays.
"""

import functools

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

HAS_VNNI = bool(llvm.get_host_cpu_features().get("avx512vnni", False))

LANES = 16  # int32 lanes of one vpdpbusd: tokens per vector
ROWS = 4  # output rows of a 4x1 block
_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V16I32, _V16F32 = ir.VectorType(_I32, LANES), ir.VectorType(_F32, LANES)
_V16I8 = ir.VectorType(_I8, LANES)


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _wide(builder, value):
    """An integer argument as i64."""
    return builder.sext(value, _I64) if value.type.width < 64 else value


def _at(builder, data, index, vector_type):
    """``&data[index]`` as a pointer to ``vector_type``."""
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


def _splat(builder, scalar, vector_type):
    vec = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(vector_type, ir.Undefined), ir.Constant(_V16I32, [0] * LANES))


def _quads(builder, rows):
    """Four 16-byte rows -> 16 lanes of 4 bytes, lane ``n`` = (row0[n], row1[n], row2[n], row3[n])."""
    first32 = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
    ab, cd = builder.shuffle_vector(rows[0], rows[1], first32), builder.shuffle_vector(rows[2], rows[3], first32)
    mask = ir.Constant(ir.VectorType(_I32, 64), [16 * t + n for n in range(LANES) for t in range(ROWS)])
    return builder.bitcast(builder.shuffle_vector(ab, cd, mask), _V16I32)


@functools.cache
def int8_block_row_step(vectors: int):
    """The step for chunks of ``16 * vectors`` tokens, compiled per ``vectors``:

    ``step(tile, tile_at, xc, x_at, group_col, group_codes, g0, g1, sx, sx_at, scale, offset, r0)``
    sets, for the block row's four rows ``i`` and the chunk's tokens ``n = 16 v + l``,
    ``tile[tile_at + 256 v + 16 i + l] = sx[sx_at + n] * scale[r0 + i] * (acc - offset[r0 + i])``
    with ``acc = sum_{g0 <= g < g1} sum_t xc[x_at + group_col[4 g + t] * 16 * vectors + n] * code_t``,
    ``code_t`` byte ``t`` of ``group_codes[4 g + i]`` (int8), ``xc`` uint8 and ``offset`` the int32
    that undoes the activations' +128.
    """
    width = LANES * vectors

    @intrinsic
    def step(typingctx, tile, tile_at, xc, x_at, group_col, group_codes, g0, g1, sx, sx_at, scale, offset, r0):
        def codegen(context, builder, sig, args):
            (tile_a, tile_i, xc_a, x_i, col_a, codes_a, g0_i, g1_i, sx_a, sx_i, scale_a, offset_a, r0_i) = args
            ta = sig.args
            tile_d, xc_d, col_d = (_data(context, builder, ta[k], a) for k, a in ((0, tile_a), (2, xc_a), (4, col_a)))
            codes_d, sx_d = _data(context, builder, ta[5], codes_a), _data(context, builder, ta[8], sx_a)
            scale_d, offset_d = _data(context, builder, ta[10], scale_a), _data(context, builder, ta[11], offset_a)
            dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3),
                                                 "llvm.x86.avx512.vpdpbusd.512")
            zero = ir.Constant(_V16I32, [0] * LANES)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(ROWS)]
            x_at = _wide(builder, x_i)
            with cgutils.for_range(builder, _wide(builder, g1_i), start=_wide(builder, g0_i)) as loop:
                g4 = builder.mul(loop.index, _I64(ROWS))
                columns = [builder.mul(_wide(builder, builder.load(builder.gep(col_d, [builder.add(g4, _I64(t))]))),
                                       _I64(width)) for t in range(ROWS)]
                quads = [_quads(builder, [builder.load(_at(builder, xc_d, builder.add(x_at, builder.add(c, _I64(LANES * v))),
                                                           _V16I8), align=16) for c in columns])
                         for v in range(vectors)]
                for i in range(ROWS):
                    w = _splat(builder, builder.load(builder.gep(codes_d, [builder.add(g4, _I64(i))])), _V16I32)
                    for v in range(vectors):
                        builder.store(builder.call(dot, [builder.load(accs[i][v]), quads[v], w]), accs[i][v])
            r0_, sx_at, tile_at = (_wide(builder, a) for a in (r0_i, sx_i, tile_i))
            for i in range(ROWS):
                r = builder.add(r0_, _I64(i))
                shift = _splat(builder, builder.load(builder.gep(offset_d, [r])), _V16I32)
                scale = _splat(builder, builder.load(builder.gep(scale_d, [r])), _V16F32)
                for v in range(vectors):
                    sx = builder.load(_at(builder, sx_d, builder.add(sx_at, _I64(LANES * v)), _V16F32), align=4)
                    value = builder.sitofp(builder.sub(builder.load(accs[i][v]), shift), _V16F32)
                    value = builder.fmul(builder.fmul(sx, scale), value)  # the reference's order
                    at = builder.add(tile_at, _I64(LANES * LANES * v + LANES * i))
                    builder.store(value, _at(builder, tile_d, at, _V16F32), align=4)
            return context.get_dummy_value()

        return types.void(tile, tile_at, xc, x_at, group_col, group_codes, g0, g1, sx, sx_at, scale, offset, r0), codegen

    return step
