"""Group-quantized weights in 16-row tiles: the layouts and the 16-lane steps of the SpQR CPU
kernels (LLVM IR intrinsics: numba does not vectorize a 16-lane accumulator).

Layout (:func:`tile_codes`): the rows of ``W: [out, in]`` are cut into tiles of 16, one row per
fp32 vector lane; each tile's codes are stored group by group, column by column, so one
16-byte load gives one column's codes for all 16 rows. Codes of at most 4 bits sit two per
byte (column ``2p`` in the low nibble, ``2p + 1`` in the high one), wider codes one per byte.
A weight is ``w = s * (q - z)`` (SpQR) or ``q * s + m`` (Quant), one ``s`` and ``z`` or ``m``
per (row, group).

Two steps, each one LLVM IR intrinsic per (tile, group or run of groups, up to 4 tokens),
the codes unpacked and converted in registers once and reused by every token, the dot
products in registers for the whole group:

* :func:`tile_group` (fp32): SpQR ``acc[j, l] += s[l] * sum_k (q[l, k] - z[l]) * x[j, k]``, with
  ``s, z`` from 8-bit second-level codes and the run's (step, minimum) scalars ("coded") or
  given per lane ("float"); Quant ``acc[j, l] += sum_k (q[l, k] * s[l] + m[l]) * x[j, k]`` from
  fp16 lanes ("half"); each weight as the reference decodes it, so fp32 rounding only;
* :func:`tile_group_vnni`: the codes in the VNNI layout (:func:`vnni_codes`) meet activations
  split into three int8 parts (``vpdpbusd``, exact int32 sums per group), then
  ``acc[j, l] += s[l] * dot + m[l] * xs[j]`` with ``m = -s * z`` and ``xs`` the group's sum.

Intrinsics do no bounds checks: callers keep every access inside the arrays.
"""

import functools

import llvmlite.binding as llvm
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # rows per tile: one AVX-512 register of fp32
NIBBLE_BITS = 4  # codes up to this width are stored two per byte
PREFETCH_BYTES = 1024  # codes are requested this far ahead of the group being read

HAS_AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))

_F32, _I8, _I32, _I64 = ir.FloatType(), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V = {t: ir.VectorType(t, LANES) for t in (_F32, _I8, ir.IntType(16), _I32)}


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


def _emit(context, builder, sig, args, group_size: int, tokens: int, nibbles: bool, stats):
    """fp32 step: ``dot[j] += w(q) * x[j, k]`` column by column, ``w`` from the statistics kind,
    then ``acc[j] += dot[j]`` scaled as the kind says."""
    acc, acc_at, codes, code_at, x, x_at, x_stride = args[:7]
    ta = sig.args
    weight, scale = stats(context, builder, ta[7:], args[7:])
    x_data = context.make_array(ta[4])(context, builder, x).data
    dots = [ir.Constant(_V[_F32], [0.0] * LANES) for _ in range(tokens)]
    fifteen, four = ir.Constant(_V[_I32], [15] * LANES), ir.Constant(_V[_I32], [4] * LANES)
    _prefetch(context, builder, ta[2], codes, builder.add(code_at, ir.Constant(code_at.type, PREFETCH_BYTES)))
    for p in range(-(-group_size // 2) if nibbles else group_size):
        at = builder.add(code_at, ir.Constant(code_at.type, LANES * p))
        raw = builder.zext(_load16(context, builder, ta[2], codes, at, _I8), _V[_I32])
        if nibbles:
            columns = [(builder.and_(raw, fifteen), 2 * p), (builder.lshr(raw, four), 2 * p + 1)]
        else:
            columns = [(raw, p)]
        for q, k in columns[: group_size - (2 * p if nibbles else p)]:  # an odd group's spare nibble is skipped
            w = weight(builder.uitofp(q, _V[_F32]))
            for j in range(tokens):
                row = builder.add(x_at, builder.mul(x_stride, ir.Constant(x_stride.type, j)))
                xk = builder.load(builder.gep(x_data, [builder.add(row, ir.Constant(row.type, k))]))
                dots[j] = _fma(builder, w, _splat(builder, xk), dots[j])
    acc_data = context.make_array(ta[0])(context, builder, acc).data
    for j in range(tokens):
        ptr = builder.bitcast(builder.gep(acc_data, [builder.add(acc_at, ir.Constant(acc_at.type, LANES * j))]),
                              _V[_F32].as_pointer())
        old = builder.load(ptr, align=4)
        builder.store(builder.fadd(old, dots[j]) if scale is None else _fma(builder, scale, dots[j], old), ptr, align=4)
    return context.get_dummy_value()


def _coded_stats(context, builder, ta, args):
    """SpQR: ``s = code_s * step_s + min_s``, ``z = code_z * step_z + min_z``; ``w = q - z``, scaled by ``s``
    at the end (the reference's ``s * (q - z)``, so fp32 rounding only)."""
    sc, zc, stat_at, s_step, s_min, z_step, z_min = args
    s = _fma(builder, _bytes_to_float(builder, _load16(context, builder, ta[0], sc, stat_at, _I8)),
             _splat(builder, _float(builder, s_step)), _splat(builder, _float(builder, s_min)))
    z = _fma(builder, _bytes_to_float(builder, _load16(context, builder, ta[1], zc, stat_at, _I8)),
             _splat(builder, _float(builder, z_step)), _splat(builder, _float(builder, z_min)))
    return (lambda q: builder.fsub(q, z)), s


def _float_stats(context, builder, ta, args):
    """fp32 ``s`` and ``z`` the caller decoded; as "coded"."""
    scale, zero, stat_at = args
    s, z = (_load16(context, builder, ta[i], arr, stat_at, _F32) for i, arr in enumerate((scale, zero)))
    return (lambda q: builder.fsub(q, z)), s


def _half_stats(context, builder, ta, args):
    """Quant: fp16 scale ``s`` and minimum ``m`` (their int16 bits, widened exactly); ``w = q * s + m``
    per weight, as the reference decodes it."""
    scale, minimum, stat_at = args
    s, m = (builder.fpext(builder.bitcast(_load16(context, builder, ta[i], arr, stat_at, ir.IntType(16)),
                                          ir.VectorType(ir.HalfType(), LANES)), _V[_F32])
            for i, arr in enumerate((scale, minimum)))
    return (lambda q: _fma(builder, q, s, m)), None


@functools.cache
def tile_group(group_size: int, tokens: int, nibbles: bool, stats: str):
    """The fp32 step for one tile-group, specialised: ``group_size`` columns (``ceil(group_size /
    2)`` code loads with nibbles, ``group_size`` without), ``tokens`` tokens per call, nibble or
    byte codes, and the statistics kind ("coded", "float" or "half").

    Call (all indices are element offsets into 1-D arrays)::

        step(acc, acc_at, codes, code_at, x, x_at, x_stride, *stats)

    ``acc`` fp32 (token ``j`` at ``acc_at + 16 j``), ``codes`` uint8 (the group's block of 16-byte
    loads), ``x`` fp32 (token ``j``'s group at ``x_at + j * x_stride``); ``*stats``
    is ``sc, zc, stat_at, s_step, s_min, z_step, z_min`` ("coded": uint8 codes, the 16 lanes at
    ``stat_at``), ``scale, zero, stat_at`` ("float": fp32 lanes) or ``scale, minimum, stat_at``
    ("half": the int16 bits of fp16 lanes).
    """
    build = {"coded": _coded_stats, "float": _float_stats, "half": _half_stats}[stats]

    def codegen(context, builder, sig, args):
        return _emit(context, builder, sig, args, group_size, tokens, nibbles, build)

    if stats == "coded":
        @intrinsic
        def step(typingctx, acc, acc_at, codes, code_at, x, x_at, x_stride, sc, zc, stat_at, s_step, s_min, z_step,
                 z_min):
            return types.void(acc, acc_at, codes, code_at, x, x_at, x_stride, sc, zc, stat_at, s_step, s_min, z_step,
                              z_min), codegen
    else:
        @intrinsic
        def step(typingctx, acc, acc_at, codes, code_at, x, x_at, x_stride, scale, zero, stat_at):
            return types.void(acc, acc_at, codes, code_at, x, x_at, x_stride, scale, zero, stat_at), codegen
    return step


# -- the VNNI variant: integer dot products on activations split into three int8 parts --------
X_PARTS = 3  # xq = p2 * 2**14 + p1 * 2**7 + p0, p0 and p1 in [0, 128), p2 in [-128, 128)
X_LEVELS = 2**21 - 1  # |xq| <= X_LEVELS: 22-bit activations, exact int32 sums per group
VNNI_COLUMNS = 8  # columns per 64-byte load: 4 low nibbles + 4 high nibbles per row


def vnni_codes(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes ``q: [out, G * group_size]`` (< 16, ``group_size % 8 == 0``) in the VNNI tile layout.

    Per tile, group and run of 8 columns, 16 rows x 4 bytes: byte ``j`` of row ``l`` holds
    column ``j`` (low nibble) and column ``4 + j`` (high nibble) of the run, so one mask gives
    ``vpdpbusd`` four codes per row for columns 0-3 and a shift and mask four for 4-7.

    Returns:
        [ceil(out / 16) * G * (group_size / 8) * 64] uint8; rows past ``out`` are 0.
    """
    out_features, width = q.shape
    tiles = -(-out_features // LANES)
    q = torch.cat([q.to(torch.uint8), q.new_zeros(tiles * LANES - out_features, width, dtype=torch.uint8)])
    q = q.reshape(tiles, LANES, width // VNNI_COLUMNS, 2, 4)  # [tile, row, run, half, j]
    packed = q[:, :, :, 0] | (q[:, :, :, 1] << 4)  # [tile, row, run, j]
    return packed.permute(0, 2, 1, 3).contiguous().reshape(-1)  # runs are group-major: group g = runs g*gs/8..


THREE_BIT_GROUP = 16  # the 3-bit VNNI layout takes groups of 16 columns, two at a time
THREE_BIT_PAIR_BYTES = 192  # per tile and pair of groups: three 64-byte words, 3 bits per code
_NIBBLES = (0x0F0F0F0F, 0x07070707)  # per byte, the low nibble's code: 4-bit layout, 3-bit layout


def vnni3_codes(q: torch.Tensor) -> torch.Tensor:
    """3-bit codes ``q: [out, G * 16]`` (< 8, G even) in the 3-bit VNNI tile layout, 96 bytes per
    tile and group instead of the nibbles' 128.

    Per tile and pair of groups (32 columns ``c``), three words ``w = 0, 1, 2`` of 16 rows x 4 bytes.
    Byte ``j`` of word ``w`` holds, for its row, column ``8 w + j`` in bits 0-2 and ``8 w + 4 + j``
    in bits 4-6 (columns 0-23 as in the nibble layout, a code per nibble), and bit ``w`` of
    column ``24 + j`` in bit 3 and of column ``28 + j`` in bit 7. A mask (and a shift) gives
    ``vpdpbusd`` four codes per row for six quads of columns; the last two quads take three
    shifted masks of the words each (:func:`_vnni_group_codes`).

    Returns:
        [ceil(out / 16) * (G / 2) * 192] uint8; rows past ``out`` are 0.
    """
    out_features, width = q.shape
    tiles, pairs = -(-out_features // LANES), width // (2 * THREE_BIT_GROUP)
    q = torch.cat([q.to(torch.uint8), q.new_zeros(tiles * LANES - out_features, width, dtype=torch.uint8)])
    q = q.reshape(tiles, LANES, pairs, 32)
    words = [q[..., 8 * w:8 * w + 4] | (q[..., 8 * w + 4:8 * w + 8] << 4) | (((q[..., 24:28] >> w) & 1) << 3)
             | (((q[..., 28:32] >> w) & 1) << 7) for w in range(3)]  # each [tile, row, pair, byte]
    return torch.stack(words, 3).permute(0, 2, 3, 1, 4).contiguous().reshape(-1)  # [tile, pair, word, row, byte]


def _vnni_group_codes(context, builder, codes_type, codes, code_at, g: int, runs: int, three_bit: bool, words: dict):
    """Group ``g``'s codes from the step's first group at ``code_at``, as ``[(operand, column)]``:
    each operand 16 lanes of four codes (bytes) of the group's columns ``column .. column + 3``,
    ready for ``vpdpbusd``. ``words`` caches the 3-bit layout's pair of groups between the two."""

    def vec(value):
        return ir.Constant(_V[_I32], [value] * LANES)

    def load(offset):
        return _load16(context, builder, codes_type, codes, builder.add(code_at, ir.Constant(code_at.type, offset)), _I32)

    if not three_bit:
        mask = vec(_NIBBLES[0])
        out = []
        for run in range(runs):
            packed = load(4 * LANES * (runs * g + run))
            out += [(builder.and_(packed, mask), VNNI_COLUMNS * run),
                    (builder.and_(builder.lshr(packed, vec(4)), mask), VNNI_COLUMNS * run + 4)]
        return out
    pair = g // 2
    if pair not in words:
        words[pair] = [load(THREE_BIT_PAIR_BYTES * pair + 4 * LANES * w) for w in range(3)]
    a, b, c = words[pair]
    mask = vec(_NIBBLES[1])

    def quads(word):
        return builder.and_(word, mask), builder.and_(builder.lshr(word, vec(4)), mask)

    if g % 2 == 0:
        return list(zip((*quads(a), *quads(b)), (0, 4, 8, 12), strict=True))

    def spare(bit):  # the three words' bit ``bit`` of each byte as the code's bits 0, 1, 2
        parts = [builder.and_(builder.lshr(word, vec(bit - w)), vec(0x01010101 << w)) for w, word in enumerate((a, b, c))]
        return builder.or_(builder.or_(parts[0], parts[1]), parts[2])

    return list(zip((*quads(c), spare(3), spare(7)), (0, 4, 8, 12), strict=True))


def _dpbusd(builder, acc, unsigned, signed):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V[_I32], [_V[_I32]] * 3),
                                        "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(fn, [acc, unsigned, signed])


def _group_stats(context, builder, ta, args, g: int):
    """Per-lane ``s, z`` of group ``g`` of the call, from the packed code byte (scale code in the
    low nibble, zero code in the high one) and the run's grids: fp32, or int16 holding fp16 bits
    (widened exactly)."""
    stat_codes, stat_at, sstats, zstats, grid_at = args
    at = builder.add(stat_at, ir.Constant(stat_at.type, LANES * g))
    pair = builder.add(grid_at, ir.Constant(grid_at.type, 2 * g))
    one = ir.Constant(pair.type, 1)

    def grid(array_type, array, index):
        value = builder.load(builder.gep(context.make_array(array_type)(context, builder, array).data, [index]))
        if isinstance(value.type, ir.IntType):
            value = builder.fpext(builder.bitcast(value, ir.HalfType()), _F32)
        return _splat(builder, value)

    packed = builder.zext(_load16(context, builder, ta[0], stat_codes, at, _I8), _V[_I32])
    scale_code = builder.uitofp(builder.and_(packed, ir.Constant(_V[_I32], [15] * LANES)), _V[_F32])
    zero_code = builder.uitofp(builder.lshr(packed, ir.Constant(_V[_I32], [4] * LANES)), _V[_F32])
    s = _fma(builder, scale_code, grid(ta[2], sstats, pair), grid(ta[2], sstats, builder.add(pair, one)))
    z = _fma(builder, zero_code, grid(ta[3], zstats, pair), grid(ta[3], zstats, builder.add(pair, one)))
    return s, z


def _emit_vnni(context, builder, sig, args, groups: int, runs: int, tokens: int, three_bit: bool):
    """For ``groups`` consecutive groups: ``acc[j] += s * float(sum_k q[k] xq[j, k]) + m * xs[j]``,
    the accumulators in registers from the first group to the last."""
    acc, acc_at, codes, code_at, xq, xq_at, part_stride, token_stride, xs, xs_at, xs_stride = args[:11]
    ta = sig.args
    xq_data = context.make_array(ta[4])(context, builder, xq).data
    xs_data = context.make_array(ta[8])(context, builder, xs).data
    acc_data = context.make_array(ta[0])(context, builder, acc).data
    zero = ir.Constant(_V[_I32], [0] * LANES)
    seven, fourteen = (ir.Constant(_V[_I32], [v] * LANES) for v in (7, 14))

    def const(value, like):
        return ir.Constant(like.type, value)

    def x_word(index):  # four int8 activations as one int32, broadcast to the 16 lanes
        word = builder.load(builder.bitcast(builder.gep(xq_data, [index]), _I32.as_pointer()), align=1)
        vec = builder.insert_element(ir.Constant(_V[_I32], ir.Undefined), word, ir.Constant(_I32, 0))
        return builder.shuffle_vector(vec, ir.Constant(_V[_I32], ir.Undefined), ir.Constant(_V[_I32], [0] * LANES))

    pointers = [builder.bitcast(builder.gep(acc_data, [builder.add(acc_at, const(LANES * j, acc_at))]),
                                _V[_F32].as_pointer()) for j in range(tokens)]
    totals = [builder.load(ptr, align=4) for ptr in pointers]
    token_base = [builder.add(xq_at, builder.mul(token_stride, const(j, token_stride))) for j in range(tokens)]
    words: dict = {}
    group_size = VNNI_COLUMNS * runs
    for g in range(groups):
        group_bytes = THREE_BIT_PAIR_BYTES // 2 if three_bit else 4 * LANES * runs
        _prefetch(context, builder, ta[2], codes, builder.add(code_at, const(PREFETCH_BYTES + group_bytes * g, code_at)))
        sums = [[zero] * X_PARTS for _ in range(tokens)]
        for operand, column in _vnni_group_codes(context, builder, ta[2], codes, code_at, g, runs, three_bit, words):
            for j in range(tokens):
                for part in range(X_PARTS):
                    base = builder.add(builder.add(token_base[j], builder.mul(part_stride, const(part, part_stride))),
                                       const(group_size * g + column, xq_at))
                    sums[j][part] = _dpbusd(builder, sums[j][part], operand, x_word(base))
        s, z = _group_stats(context, builder, ta[11:], args[11:], g)
        m = builder.fneg(builder.fmul(s, z))
        for j in range(tokens):
            p0, p1, p2 = sums[j]
            dot = builder.sitofp(builder.add(builder.add(builder.shl(p2, fourteen), builder.shl(p1, seven)), p0), _V[_F32])
            index = builder.add(builder.add(xs_at, builder.mul(xs_stride, const(j, xs_stride))), const(g, xs_at))
            totals[j] = _fma(builder, s, dot, _fma(builder, m, _splat(builder, builder.load(builder.gep(xs_data, [index]))),
                                                   totals[j]))
    for ptr, total in zip(pointers, totals, strict=True):
        builder.store(total, ptr, align=4)
    return context.get_dummy_value()


@functools.cache
def tile_group_vnni(groups: int, runs: int, tokens: int, three_bit: bool = False):
    """The VNNI step over ``groups`` consecutive groups of one tile: ``runs`` 64-byte code loads per
    group (``group_size / 8``) in the nibble layout, or, ``three_bit``, the pairs of 16-column
    groups of :func:`vnni3_codes` (``groups`` even, ``code_at`` at a pair), ``tokens`` tokens per call.

    Call (element offsets into 1-D arrays)::

        step(acc, acc_at, codes, code_at, xq, xq_at, part_stride, token_stride, xs, xs_at, xs_stride,
             stat_codes, stat_at, sstats, zstats, grid_at)

    ``xq`` int8: part ``p`` of token ``j``'s first group at ``xq_at + j * token_stride + p *
    part_stride``; ``xs`` holds the group sums divided by the token's activation step, so ``acc``
    gathers ``y / step``; ``stat_codes`` the second-level codes, scale | zero << 4 (16 lanes per group
    from ``stat_at``)
    and ``sstats, zstats`` the flat fp32 (step, minimum) grids, the first group's pair at
    ``grid_at``; the rest as in :func:`tile_group`.
    """

    def codegen(context, builder, sig, args):
        return _emit_vnni(context, builder, sig, args, groups, runs, tokens, three_bit)

    @intrinsic
    def step(typingctx, acc, acc_at, codes, code_at, xq, xq_at, part_stride, token_stride, xs, xs_at, xs_stride,
             stat_codes, stat_at, sstats, zstats, grid_at):
        return types.void(acc, acc_at, codes, code_at, xq, xq_at, part_stride, token_stride, xs, xs_at, xs_stride,
                          stat_codes, stat_at, sstats, zstats, grid_at), codegen

    return step


# -- outliers: per tile slots of 16 lanes (one per row) -------------------------------------------
def ell_slots(rows: torch.Tensor, counts: torch.Tensor, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of a CSR matrix's entries goes in the tile-slot layout.

    Tile ``t`` gets as many 16-lane slots as its longest row has entries; row ``r``'s ``i``-th
    entry sits in lane ``r % 16`` of slot ``slot_ptr[t] + i`` (unused lanes stay empty).

    Args:
        rows: [nnz] int64 row of each entry, row-major order; counts: [out] entries per row.
    Returns:
        (slot_ptr [tiles + 1] int64, index [nnz] int64: each entry's element offset, slot * 16 + lane).
    """
    tiles = -(-out_features // LANES)
    padded = torch.cat([counts, counts.new_zeros(tiles * LANES - out_features)]).view(tiles, LANES)
    slot_ptr = torch.cat([counts.new_zeros(1), padded.amax(dim=1).cumsum(0)]).long()
    rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    rank = torch.arange(rows.numel()) - rowptr[rows]
    return slot_ptr, (slot_ptr[rows // LANES] + rank) * LANES + rows % LANES


def _gather16(builder, base, index):
    """The 16 fp32 values at ``base[index[l]]`` (``base`` an fp32 pointer, ``index`` 16 int32).

    AVX-512 hosts get ``vgatherdps`` directly (the measured kernels); elsewhere LLVM's generic
    masked gather over 16 computed addresses, which each target lowers as it can (scalar loads on
    AVX2 Zen, whose gathers are slow): the AVX-512 intrinsic aborts the process on such CPUs."""
    all_lanes = ir.Constant(ir.VectorType(ir.IntType(1), LANES), [1] * LANES)
    zeros = ir.Constant(_V[_F32], [0.0] * LANES)
    if HAS_AVX512:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V[_F32], [_V[_F32], _I8.as_pointer(), _V[_I32], all_lanes.type, _I32]),
            "llvm.x86.avx512.mask.gather.dps.512")
        return builder.call(fn, [zeros, builder.bitcast(base, _I8.as_pointer()), index, all_lanes, ir.Constant(_I32, 4)])
    v64 = ir.VectorType(_I64, LANES)
    start = builder.insert_element(ir.Constant(v64, ir.Undefined), builder.ptrtoint(base, _I64), ir.Constant(_I32, 0))
    start = builder.shuffle_vector(start, ir.Constant(v64, ir.Undefined), ir.Constant(_V[_I32], [0] * LANES))
    offsets = builder.mul(builder.sext(index, v64), ir.Constant(v64, [4] * LANES))
    pointers = builder.inttoptr(builder.add(start, offsets), ir.VectorType(_F32.as_pointer(), LANES))
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V[_F32], [pointers.type, _I32, all_lanes.type, _V[_F32]]),
        "llvm.masked.gather.v16f32.v16p0")
    return builder.call(fn, [pointers, ir.Constant(_I32, 4), all_lanes, zeros])


def outlier_slots(rows: torch.Tensor, counts: torch.Tensor, pos: torch.Tensor, delta: torch.Tensor,
                  out_features: int) -> tuple[torch.Tensor, ...]:
    """A CSR matrix's entries (``pos``, ``delta`` per entry, row-major) in the tile-slot layout, stored
    compactly: the slots of :func:`ell_slots` keep only their occupied lanes, named by a 16-bit mask.

    Returns:
        (slot_ptr [tiles + 1] int64, masks [slots] int16 (bit ``l``: lane ``l`` holds an entry),
        starts [tiles] int64 (tile ``t``'s first entry), pos and delta [nnz] in slot order, each
        slot's entries by ascending lane).
    """
    slot_ptr, index = ell_slots(rows, counts, out_features)
    order = torch.argsort(index)
    masks = torch.zeros(int(slot_ptr[-1]), dtype=torch.int32).index_add_(0, index // LANES, 1 << (index % LANES).int())
    tiles = slot_ptr.numel() - 1
    rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).long()
    starts = rowptr[torch.clamp(torch.arange(tiles) * LANES, max=out_features)]
    return slot_ptr, masks.to(torch.int16), starts, pos[order], delta[order]


@intrinsic
def outlier_expand(typingctx, acc, acc_at, masks, s0, s1, at, pos, delta, x, x_at):
    """``acc[acc_at + l] += delta[e] * x[x_at + pos[e]]`` for slots ``s0 .. s1`` of a tile (:func:`outlier_slots`):
    per slot, the entries from ``at`` on fill the lanes its mask sets (expand loads), one gather
    (:func:`_gather16`) reads their activations; ``pos`` int16 or int32, ``delta`` and ``x`` fp32."""

    def codegen(context, builder, sig, args):
        acc_a, acc_i, mask_a, s0_i, s1_i, at_i, pos_a, delta_a, x_a, x_i = args
        ta = sig.args
        width = ta[6].dtype.bitwidth
        v_pos = ir.VectorType(ir.IntType(width), LANES)
        v_mask = ir.VectorType(ir.IntType(1), LANES)

        def expand(array_type, array, index, vtype):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vtype, [vtype.element.as_pointer(), v_mask, vtype]),
                f"llvm.masked.expandload.v16{'f32' if vtype.element == _F32 else f'i{vtype.element.width}'}")
            data = context.make_array(array_type)(context, builder, array).data
            return builder.call(fn, [builder.gep(data, [index]), lanes, ir.Constant(vtype, None)])

        mask_data = context.make_array(ta[2])(context, builder, mask_a).data
        x_base = builder.gep(context.make_array(ta[8])(context, builder, x_a).data, [x_i])
        ptr = _pointer(context, builder, ta[0], acc_a, acc_i, _V[_F32])
        total = cgutils.alloca_once_value(builder, builder.load(ptr, align=4))
        cursor = cgutils.alloca_once_value(builder, at_i)
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]),
                                                  "llvm.ctpop.i16")
        with cgutils.for_range(builder, s1_i, start=s0_i) as loop:
            bits = builder.load(builder.gep(mask_data, [loop.index]))
            lanes = builder.bitcast(bits, v_mask)
            at = builder.load(cursor)
            index = expand(ta[6], pos_a, at, v_pos)
            index = builder.sext(index, _V[_I32]) if width < 32 else index
            weights = expand(ta[7], delta_a, at, _V[_F32])
            builder.store(_fma(builder, weights, _gather16(builder, x_base, index), builder.load(total)), total)
            builder.store(builder.add(at, builder.zext(builder.call(popcount, [bits]), at.type)), cursor)
        builder.store(builder.load(total), ptr, align=4)
        return context.get_dummy_value()

    return types.void(acc, acc_at, masks, s0, s1, at, pos, delta, x, x_at), codegen
