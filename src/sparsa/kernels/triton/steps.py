"""Device functions the Triton kernels share (``@triton.jit``, inlined into their callers)."""

import triton
import triton.language as tl


@triton.jit
def packed_codes(codes_ptr, index, n_bytes, ok, BITS: tl.constexpr):
    """The ``BITS``-bit codes (2..8) at positions ``index`` (int64, any shape) of a little-endian
    bit stream of ``n_bytes`` bytes (:mod:`sparsa.formats.bitpack`), as int32; 0 where not ``ok``.
    A code spans at most two bytes: stitch them, shift, mask."""
    bit = index * BITS
    byte = bit >> 3
    low = tl.load(codes_ptr + byte, mask=ok, other=0).to(tl.int32)
    high = tl.load(codes_ptr + byte + 1, mask=ok & (byte + 1 < n_bytes), other=0).to(tl.int32)
    return ((low | (high << 8)) >> (bit & 7).to(tl.int32)) & ((1 << BITS) - 1)


@triton.jit
def output_tile(out_features, n_tokens, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output rows [BLOCK_M] and tokens [BLOCK_N] (grid axis 0: row tiles, axis 1:
    token tiles) and their in-range masks."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tokens = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, tokens, rows < out_features, tokens < n_tokens


@triton.jit
def dot_rows(acc, x, w, IEEE: tl.constexpr):
    """``acc + x @ wᵀ`` (x [N, K], w [M, K], fp32 sums); exact fp32 products when ``IEEE``."""
    if IEEE:
        return acc + tl.dot(x, tl.trans(w), input_precision="ieee")
    return acc + tl.dot(x, tl.trans(w))


@triton.jit
def load_tokens(x_ptr, tokens, columns, token_ok, column_ok, stride_x):
    """``x[tokens, columns]`` [BLOCK_N, BLOCK_K] in the activations' dtype, 0 outside."""
    return tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + columns[None, :],
                   mask=token_ok[:, None] & column_ok[None, :], other=0.0)


@triton.jit
def store_outputs(y_ptr, acc, bias_ptr, tokens, rows, token_ok, row_ok, stride_y, HAS_BIAS: tl.constexpr):
    """``y[tokens, rows] = acc + bias[rows]`` (acc [BLOCK_N, BLOCK_M] fp32), cast to ``y``'s dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + tokens[:, None].to(tl.int64) * stride_y + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=token_ok[:, None] & row_ok[None, :])
