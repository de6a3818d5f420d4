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
def dot_rows(acc, x, w, IEEE: tl.constexpr):
    """``acc + x @ wᵀ`` (x [N, K], w [M, K], fp32 sums); exact fp32 products when ``IEEE``."""
    if IEEE:
        return acc + tl.dot(x, tl.trans(w), input_precision="ieee")
    return acc + tl.dot(x, tl.trans(w))
