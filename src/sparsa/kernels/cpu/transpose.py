"""A 16 x 16 fp32 transpose in AVX-512 registers (LLVM IR intrinsic; numba writes it element by element).

Kernels that keep tokens in the vector lanes finish with a ``[rows, tokens]`` tile that must
land in ``Y: [tokens, out]`` row-major. :func:`transpose16` loads 16 rows of 16 floats,
transposes them with four rounds of two-source shuffles (2x2 blocks of 8, 4, 2, then 1
elements swap across row pairs) and stores 16 rows of 16 floats; :func:`store_tile` does
that for a whole tile and falls back to element stores at a ragged edge.
"""

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

N = 16
_F32, _I32 = ir.FloatType(), ir.IntType(32)
_ROW = ir.VectorType(_F32, N)


def _swap_masks(s: int) -> tuple[list[int], list[int]]:
    """Shuffle masks over (A, B) = rows (i, i + s): columns with bit ``s`` clear take A's own
    element, the others B's element ``s`` to the left; and the mirror for the second row."""
    first = [c if c & s == 0 else N + c - s for c in range(N)]
    second = [c + s if c & s == 0 else N + c for c in range(N)]
    return first, second


@intrinsic
def transpose16(typingctx, src, src_at, src_stride, dst, dst_at, dst_stride):
    """``dst[dst_at + j * dst_stride + i] = src[src_at + i * src_stride + j]`` for i, j < 16, the
    offsets counted in elements from each (C-contiguous fp32) array's start, whatever its
    dimensions; no bounds checks."""

    def codegen(context, builder, sig, args):
        src_a, src_i, src_s, dst_a, dst_i, dst_s = args
        src_data = context.make_array(sig.args[0])(context, builder, src_a).data
        dst_data = context.make_array(sig.args[3])(context, builder, dst_a).data

        def row_ptr(data, start, stride, i):
            at = builder.add(start, builder.mul(stride, ir.Constant(stride.type, i)))
            return builder.bitcast(builder.gep(data, [at]), _ROW.as_pointer())

        rows = [builder.load(row_ptr(src_data, src_i, src_s, i), align=4) for i in range(N)]
        for s in (8, 4, 2, 1):
            first, second = (ir.Constant(ir.VectorType(_I32, N), m) for m in _swap_masks(s))
            for i in range(N):
                if i & s == 0:
                    a, b = rows[i], rows[i + s]
                    rows[i], rows[i + s] = builder.shuffle_vector(a, b, first), builder.shuffle_vector(a, b, second)
        for j in range(N):
            builder.store(rows[j], row_ptr(dst_data, dst_i, dst_s, j), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, src_stride, dst, dst_at, dst_stride), codegen


@numba.njit(inline="always")
def store_tile(tile, tile_at, y, n0, r0, tokens, rows):  # pragma: no cover - compiled
    """``y[n0 + n, r0 + i] = tile[tile_at + 16 * i + n]`` for ``n < tokens``, ``i < rows`` (both <= 16):
    a ``[16 rows, 16 tokens]`` tile (flat fp32) into ``y [N, M]``, through registers when whole."""
    if rows == N and tokens == N:
        transpose16(tile, tile_at, N, y, n0 * y.shape[1] + r0, y.shape[1])
    else:
        for n in range(tokens):
            for i in range(rows):
                y[n0 + n, r0 + i] = tile[tile_at + N * i + n]
