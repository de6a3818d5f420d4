"""Group-quantized weights in 16-row tiles: the layout and the AVX-512 step the SpQR and Quant
kernels share (one LLVM IR intrinsic, since numba does not vectorize a 16-lane accumulator).

Layout (:func:`tile_codes`): the rows of ``W: [out, in]`` are cut into tiles of 16, one row per
fp32 vector lane; each tile's codes are stored group by group, column by column, so one
16-byte load gives one column's codes for all 16 rows. Codes of at most 4 bits sit two per
byte (column ``2p`` in the low nibble, ``2p + 1`` in the high one), wider codes one per byte.
A weight ``w = s * q + m`` with one scale ``s`` and offset ``m`` per (row, group).

The step (:func:`tile_group`) adds one group of one tile to the outputs of ``tokens`` tokens::

    acc[j, l] += s[l] * sum_k q[l, k] * x[j, k]  +  m[l] * xs[j]       (l < 16 lanes, j < tokens)

where ``xs[j]`` is the sum of the group's activations. The codes are unpacked and converted in
registers once and reused by every token; the dot products stay in registers for the whole
group, and ``acc`` is read and written once per group. The per-lane ``s, m`` come from

* ``"coded"`` (SpQR): 8-bit second-level codes and the run's (step, minimum) pairs as scalars,
  ``s = code_s * step_s + min_s``, ``z = code_z * step_z + min_z``, ``m = -s * z``;
* ``"half"`` (Quant): fp16 ``s`` and ``m`` (passed as their int16 bits, widened exactly);
* ``"float"``: fp32 ``s`` and ``m`` the caller decoded.

Intrinsics do no bounds checks: callers keep every access inside the arrays.
"""

import functools

import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # rows per tile: one AVX-512 register of fp32
NIBBLE_BITS = 4  # codes up to this width are stored two per byte
PREFETCH_BYTES = 1024  # codes are requested this far ahead of the group being read

_F32, _I8, _I16, _I32 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V = {t: ir.VectorType(t, LANES) for t in (_F32, _I8, _I16, _I32, ir.HalfType())}


def tile_codes(q: torch.Tensor, group_size: int, nibbles: bool) -> torch.Tensor:
    """Codes ``q: [out, G * group_size]`` (integers < 256) in the tile layout.

    Returns:
        [ceil(out / 16) * G * steps * 16] uint8, ``steps = ceil(group_size / 2)`` with nibbles (an
        odd group's last high nibble is 0) or ``group_size`` without; rows past ``out`` are 0.
    """
    out_features, width = q.shape
    groups, tiles = width // group_size, -(-out_features // LANES)
    q = q.to(torch.uint8).reshape(out_features, groups, group_size)
    q = torch.cat([q, q.new_zeros(tiles * LANES - out_features, groups, group_size)])
    if nibbles:
        if group_size % 2:
            q = torch.cat([q, q.new_zeros(q.shape[0], groups, 1)], dim=2)
        q = q[:, :, 0::2] | (q[:, :, 1::2] << 4)
    # [tiles * 16, G, steps] -> [tiles, G, steps, 16]
    return q.reshape(tiles, LANES, groups, -1).permute(0, 2, 3, 1).contiguous().reshape(-1)


def _pointer(context, builder, array_type, array, index, pointee):
    """``&array[index]`` cast to ``pointee*``."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), pointee.as_pointer())


def _float(builder, value):
    """An fp32 LLVM value from a numba float argument (float32 or float64)."""
    return builder.fptrunc(value, _F32) if isinstance(value.type, ir.DoubleType) else value


def _splat(builder, scalar):
    """A 16-lane vector of ``scalar`` (fp32)."""
    vec = builder.insert_element(ir.Constant(_V[_F32], ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(_V[_F32], ir.Undefined), ir.Constant(_V[_I32], [0] * LANES))


def _fma(builder, a, b, c):
    """``a * b + c`` on 16 fp32 lanes, fused."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V[_F32], [_V[_F32]] * 3), "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


def _load16(context, builder, array_type, array, index, elem):
    """16 consecutive elements of type ``elem`` at ``array[index]`` (unaligned)."""
    return builder.load(_pointer(context, builder, array_type, array, index, _V[elem]), align=1)


def _bytes_to_float(builder, vec):
    """16 uint8 -> 16 fp32 (exact)."""
    return builder.uitofp(builder.zext(vec, _V[_I32]), _V[_F32])


def _prefetch(context, builder, array_type, array, index):
    """Hint the cache line at ``array[index]`` into L1 (no fault if it lies past the array)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]),
                                        "llvm.prefetch.p0i8")
    data = context.make_array(array_type)(context, builder, array).data
    ptr = builder.bitcast(builder.gep(data, [index]), _I8.as_pointer())
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _emit(context, builder, sig, args, steps: int, tokens: int, nibbles: bool, stats):
    """Shared body: group dot products, then ``acc += s * dot + m * xs`` per token."""
    acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride = args[:10]
    ta = sig.args
    x_data = context.make_array(ta[4])(context, builder, x).data
    dots = [ir.Constant(_V[_F32], [0.0] * LANES) for _ in range(tokens)]
    fifteen, four = ir.Constant(_V[_I32], [15] * LANES), ir.Constant(_V[_I32], [4] * LANES)
    _prefetch(context, builder, ta[2], codes, builder.add(code_at, ir.Constant(code_at.type, PREFETCH_BYTES)))
    for p in range(steps):
        at = builder.add(code_at, ir.Constant(code_at.type, LANES * p))
        raw = builder.zext(_load16(context, builder, ta[2], codes, at, _I8), _V[_I32])
        if nibbles:
            columns = [(builder.uitofp(builder.and_(raw, fifteen), _V[_F32]), 2 * p),
                       (builder.uitofp(builder.lshr(raw, four), _V[_F32]), 2 * p + 1)]
        else:
            columns = [(builder.uitofp(raw, _V[_F32]), p)]
        for j in range(tokens):
            row = builder.add(x_at, builder.mul(x_stride, ir.Constant(x_stride.type, j)))
            for q, k in columns:
                xk = builder.load(builder.gep(x_data, [builder.add(row, ir.Constant(row.type, k))]))
                dots[j] = _fma(builder, q, _splat(builder, xk), dots[j])
    s, m = stats(context, builder, sig, args[10:])
    xs_data = context.make_array(ta[7])(context, builder, xs).data
    acc_data = context.make_array(ta[0])(context, builder, acc).data
    for j in range(tokens):
        xsj = builder.load(builder.gep(xs_data, [builder.add(xs_at, builder.mul(xs_stride, ir.Constant(xs_stride.type, j)))]))
        ptr = builder.bitcast(builder.gep(acc_data, [builder.add(acc_at, ir.Constant(acc_at.type, LANES * j))]),
                              _V[_F32].as_pointer())
        total = _fma(builder, m, _splat(builder, xsj), builder.load(ptr, align=4))
        builder.store(_fma(builder, s, dots[j], total), ptr, align=4)
    return context.get_dummy_value()


def _coded_stats(context, builder, sig, args):
    """SpQR: ``s = code_s * step_s + min_s``, ``m = -s * (code_z * step_z + min_z)``."""
    sc, zc, stat_at, s_step, s_min, z_step, z_min = args
    ta = sig.args[10:]
    s = _fma(builder, _bytes_to_float(builder, _load16(context, builder, ta[0], sc, stat_at, _I8)),
             _splat(builder, _float(builder, s_step)), _splat(builder, _float(builder, s_min)))
    z = _fma(builder, _bytes_to_float(builder, _load16(context, builder, ta[1], zc, stat_at, _I8)),
             _splat(builder, _float(builder, z_step)), _splat(builder, _float(builder, z_min)))
    return s, builder.fneg(builder.fmul(s, z))


def _half_stats(context, builder, sig, args):
    """Quant: fp16 ``s`` and ``m`` stored as int16 bits, widened exactly."""
    scale, offset, stat_at = args
    ta = sig.args[10:]
    return tuple(builder.fpext(builder.bitcast(_load16(context, builder, ta[i], arr, stat_at, _I16), _V[ir.HalfType()]),
                               _V[_F32]) for i, arr in enumerate((scale, offset)))


def _float_stats(context, builder, sig, args):
    """fp32 ``s`` and ``m`` as given."""
    scale, offset, stat_at = args
    ta = sig.args[10:]
    return tuple(_load16(context, builder, ta[i], arr, stat_at, _F32) for i, arr in enumerate((scale, offset)))


@functools.cache
def tile_group(steps: int, tokens: int, nibbles: bool, stats: str):
    """The step for one tile-group, specialised: ``steps`` code loads per group, ``tokens`` tokens
    per call, nibble or byte codes, and the statistics kind ("coded", "half" or "float").

    Call (all indices are element offsets into 1-D arrays)::

        step(acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride, *stats)

    ``acc`` fp32 (token ``j`` at ``acc_at + 16 j``), ``codes`` uint8 (the group's block of
    ``steps * 16`` bytes), ``x`` fp32 (token ``j``'s group at ``x_at + j * x_stride``), ``xs`` fp32
    group sums (token ``j`` at ``xs_at + j * xs_stride``); ``*stats`` is ``sc, zc, stat_at,
    s_step, s_min, z_step, z_min`` ("coded": uint8 codes) or ``scale, offset, stat_at`` ("half":
    int16, "float": fp32), the 16 lanes at ``stat_at``.
    """
    build = {"coded": _coded_stats, "half": _half_stats, "float": _float_stats}[stats]

    def codegen(context, builder, sig, args):
        return _emit(context, builder, sig, args, steps, tokens, nibbles, build)

    if stats == "coded":
        @intrinsic
        def step(typingctx, acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride,
                 sc, zc, stat_at, s_step, s_min, z_step, z_min):
            return types.void(acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride,
                              sc, zc, stat_at, s_step, s_min, z_step, z_min), codegen
    else:
        @intrinsic
        def step(typingctx, acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride,
                 scale, offset, stat_at):
            return types.void(acc, acc_at, codes, code_at, x, x_at, x_stride, xs, xs_at, xs_stride,
                              scale, offset, stat_at), codegen
    return step
