"""Two AVX-512 building blocks numba cannot express, written as LLVM IR intrinsics.

* :func:`dpbusd16`: one ``vpdpbusd`` (AVX-512 VNNI): sixteen int32 lanes each add the dot
  product of four uint8 activations with four int8 weights.
* :func:`interleave4`: sixteen bytes from each of four rows laid out as sixteen 4-byte lanes
  (``dst[4n + t] = row_t[n]``), the activation layout ``vpdpbusd`` reads.

Both take 1-D contiguous arrays and element offsets; they do no bounds checks, so callers
keep every access inside the arrays. :data:`HAS_VNNI` says whether this CPU runs them.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

HAS_VNNI = bool(llvm.get_host_cpu_features().get("avx512vnni", False))

_I8, _I32 = ir.IntType(8), ir.IntType(32)
_V16I32, _V16I8, _V32I8, _V64I8 = (ir.VectorType(_I32, 16), ir.VectorType(_I8, 16), ir.VectorType(_I8, 32),
                                   ir.VectorType(_I8, 64))


def _pointer(context, builder, array_type, array, index, vector_type):
    """``&array[index]`` as a pointer to ``vector_type``."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


@intrinsic
def dpbusd16(typingctx, acc, acc_index, x, x_index, w):
    """``acc[acc_index : +16] += vpdpbusd(x[x_index : +64] as 16 x 4 uint8, w)``.

    ``acc``: int32 array; ``x``: uint8 array; ``w``: int32 holding four int8 weights (byte ``t``
    multiplies byte ``t`` of every 4-byte lane), broadcast to all lanes.
    """
    sig = types.void(acc, acc_index, x, x_index, w)

    def codegen(context, builder, signature, args):
        acc_arr, acc_at, x_arr, x_at, w_val = args
        acc_ptr = _pointer(context, builder, signature.args[0], acc_arr, acc_at, _V16I32)
        x_ptr = _pointer(context, builder, signature.args[2], x_arr, x_at, _V16I32)
        w32 = builder.trunc(w_val, _I32) if w_val.type.width > 32 else w_val
        lanes = builder.insert_element(ir.Constant(_V16I32, ir.Undefined), w32, ir.Constant(_I32, 0))
        lanes = builder.shuffle_vector(lanes, ir.Constant(_V16I32, ir.Undefined), ir.Constant(_V16I32, [0] * 16))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        total = builder.call(fn, [builder.load(acc_ptr, align=4), builder.load(x_ptr, align=1), lanes])
        builder.store(total, acc_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def interleave4(typingctx, dst, dst_index, src, i0, i1, i2, i3):
    """``dst[dst_index + 4n + t] = src[i_t + n]`` for n < 16, t < 4 (uint8 arrays)."""
    sig = types.void(dst, dst_index, src, i0, i1, i2, i3)

    def codegen(context, builder, signature, args):
        dst_arr, dst_at, src_arr, *starts = args
        rows = [builder.load(_pointer(context, builder, signature.args[2], src_arr, s, _V16I8), align=1)
                for s in starts]
        first32 = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
        ab = builder.shuffle_vector(rows[0], rows[1], first32)
        cd = builder.shuffle_vector(rows[2], rows[3], first32)
        mask = ir.Constant(ir.VectorType(_I32, 64), [16 * t + n for n in range(16) for t in range(4)])
        builder.store(builder.shuffle_vector(ab, cd, mask),
                      _pointer(context, builder, signature.args[0], dst_arr, dst_at, _V64I8), align=1)
        return context.get_dummy_value()

    return sig, codegen
