"""SpQR ``Y = X Wᵀ + b`` on the GPU (Triton): one launch, the outliers and the bias in the same pass.

The kernels read a layout built once per weight (:func:`spqr_gpu_layout`, cached) in which every
first-level group of β1 permuted inputs is padded to ``slots`` (a power of two, at least one
32-bit word of codes) and every code sits in a field of ``code_bits`` = 2, 4 or 8 bits (the next
power of two >= ``bits``) of an int32 word. A word never straddles two groups, so a tile of
``GROUPS x WORDS`` words per row is cut from its words with one shift and one mask per code and
takes its statistics once per (row, group)::

    q[r, g, w, c] = (words[r, g·WG + w] >> c·code_bits) & (2^bits - 1)      # WG = slots / codes per word
    s, z          = decoded from the (scale code, zero code) pair of (r, g) and the run's fp16 (step, minimum)
    w[r, g, w, c] = s * (q - z)                                               # fp32, as the reference
    y[r]         += w[r, g, w, c] * x[perm[(g·WG + w)·codes per word + c]]    # pad slots: perm -1, x = 0

and then adds each of its rows' outliers as ``delta * x[col]`` (``delta = value - s * (round(z) -
z)``, the code under an outlier being ``round(z)`` in the layout), the bias, and casts.

Two kernels share those steps:

* one token (decode): :func:`_spqr_gemv_kernel`, ``GEMV_ROWS`` rows per program, products summed
  elementwise in fp32 registers and reduced once at the end (4096 outputs: 1024 programs for
  the 132 SMs of an H100, each with few long steps, so many loads are in flight);
* more tokens: :func:`_spqr_tile_kernel`, a tile of 16-64 outputs x 16-64 tokens per program,
  the dequantized tile cast to the activations' dtype and summed by ``tl.dot`` in fp32.

At one token on an H100 (2026-11-23, CUDA-graph medians, 3-bit, β1 = β2 = 16, 1% outliers) a call
takes 24 µs at 4096x4096, 61 at 11008x4096 and 56 at 4096x11008 (the two-launch kernel before:
189, 432, 424; cuBLAS fp16: 16, 35, 36), 6x the floor of the bytes it reads (11.4 MB at 4096x4096,
3.8 µs at 3 TB/s). Its main loop compiles to about 16 instructions per weight (sm_90 SASS from
Triton 3.9 offline), about 9 µs of issue at 4096x4096 alone: instructions, more than bytes, are
what to cut next.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparsa.formats.bitpack import unpack_bits
from sparsa.formats.spqr import SpQR
from sparsa.kernels.dispatch import register_linear_kernel
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.triton.calls import rows_per_program, token_rows, tokens_per_program
from sparsa.kernels.triton.steps import dot_rows, load_tokens, output_tile, store_outputs

# One token per call: rows per program, padded inputs per step, warps. tools/device/spqr_gemv.py --sweep on an H100
# (2026-11-23): fastest at 4096x4096 and within 3% of the fastest of 15 settings at 11008x4096 and 4096x11008.
GEMV_ROWS = 4
GEMV_INPUTS = 1024
GEMV_WARPS = 4
GEMV_OUTLIERS = 128  # outliers per step (4 rows of a 4096-input weight with 1% outliers: ~164)
TILE_INPUTS = 64  # padded inputs per step of the tile kernel (more tokens)
TILE_OUTLIERS = 32


@dataclass(frozen=True)
class SpQRGpuLayout:
    """What the kernels read beside the format's statistics (on the weight's device).

    Attributes:
        code_bits: 2, 4 or 8, bits of one code's field in ``words``.
        slots: padded inputs per first-level group, a power of two >= β1 and >= 32 / code_bits.
        words: [out, groups * slots * code_bits / 32] int32, the codes of each row in permuted input
            order, group by group, ``32 / code_bits`` per word, least significant field first; the
            code under an outlier and every pad slot hold ``round(z)`` (clamped to the code range),
            so the weight there is near 0.
        stat_codes: [out, groups] uint8 (``stat_bits`` <= 4) or int16, the scale code ORed with the
            zero-point code shifted left by ``stat_bits``.
        perm: [groups * slots] int32, original input of each padded slot, -1 for a pad slot.
        outlier_ptr: [out + 1] int32, row ``r``'s outliers are ``outlier_ptr[r] .. [r+1]``.
        outlier_col: [nnz] int32, original input column.
        outlier_delta: [nnz] fp32, the outlier minus the dequantized weight it replaces.
    """

    code_bits: int
    slots: int
    words: torch.Tensor
    stat_codes: torch.Tensor
    perm: torch.Tensor
    outlier_ptr: torch.Tensor
    outlier_col: torch.Tensor
    outlier_delta: torch.Tensor

    @property
    def codes_per_word(self) -> int:
        return 32 // self.code_bits

    @property
    def group_words(self) -> int:
        """Words of one padded group."""
        return self.slots // self.codes_per_word


def spqr_gpu_layout(weight: SpQR) -> SpQRGpuLayout:
    """Build :class:`SpQRGpuLayout` from ``weight`` (torch ops on the weight's device)."""
    (out_features, _), groups, group_size = weight.shape, weight.groups, weight.group_size
    code_bits = triton.next_power_of_2(max(2, weight.bits))
    slots = max(triton.next_power_of_2(group_size), 32 // code_bits)
    perm = weight.permutation()
    _, z = weight.first_level_stats()  # [out, G]
    codes, _, delta = weight.outlier_free_codes()
    near_zero = z.round().clamp(0, 2**weight.bits - 1).long()  # [out, G]
    q = near_zero[:, :, None].repeat(1, 1, slots)  # [out, G, slots], pad slots included
    q[:, :, :group_size] = codes.view(out_features, groups, group_size)
    shifts = torch.arange(0, 32, code_bits, device=q.device)
    words = (q.view(out_features, -1, 32 // code_bits) << shifts).sum(-1)  # [out, words], < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    n_stats = out_features * groups
    pairs = (unpack_bits(weight.scale_codes, weight.stat_bits, n_stats).long()
             | unpack_bits(weight.zero_codes, weight.stat_bits, n_stats).long() << weight.stat_bits)
    stat_codes = (pairs if weight.stat_bits <= 4 else torch.where(pairs >= 2**15, pairs - 2**16, pairs)).to(
        torch.uint8 if weight.stat_bits <= 4 else torch.int16).view(out_features, groups)
    padded_perm = torch.full((groups, slots), -1, dtype=torch.int32, device=perm.device)
    padded_perm[:, :group_size] = perm.view(groups, group_size).to(torch.int32)
    return SpQRGpuLayout(code_bits, slots, words, stat_codes, padded_perm.view(-1),
                         weight.outlier_rowptr().to(torch.int32), weight.outlier_col.to(torch.int32), delta)


@triton.jit
def _exact_float(code):
    """int32 codes in [0, 2^23) as fp32, exactly: the bits of 2^23 + code, minus 2^23 (a logic op
    and an add instead of a conversion, which runs at a quarter of the rate)."""
    return (code | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _tile_words(w0, GROUPS: tl.constexpr, WORDS: tl.constexpr):
    """Word indices in a row of the tile starting at word ``w0``: the first of each group
    [1, GROUPS, 1, 1] and every one [1, GROUPS, WORDS, 1]."""
    first = w0 + tl.arange(0, GROUPS)[None, :, None, None] * WORDS
    return first, first + tl.arange(0, WORDS)[None, None, :, None]


@triton.jit
def _tile_weights(words_ptr, stat_codes_ptr, scale_stats_ptr, zero_stats_ptr, rows, row_ok, first, word,
                  row_words, n_groups, stat_group_size, BITS: tl.constexpr, STAT_BITS: tl.constexpr,
                  CODES: tl.constexpr, GROUP_WORDS: tl.constexpr):
    """Dequantized weights [BLOCK_M, GROUPS, WORDS, CODES] fp32 of ``rows`` [BLOCK_M] at the tile's
    words (:func:`_tile_words`; ``CODES`` per word); 0 past the row's words or outside ``rows``."""
    row = rows[:, None, None, None].to(tl.int64)
    ok = row_ok[:, None, None, None]
    packed = tl.load(words_ptr + row * row_words + word, mask=ok & (word < row_words), other=0)
    fields = tl.arange(0, CODES)[None, None, None, :] * (32 // CODES)
    q = _exact_float((packed >> fields) & ((1 << BITS) - 1))
    group = first // GROUP_WORDS  # [1, GROUPS, 1, 1]
    group_ok = ok & (group < n_groups)
    pair = tl.load(stat_codes_ptr + row * n_groups + group, mask=group_ok, other=0).to(tl.int32)
    at = ((rows // stat_group_size)[:, None, None, None].to(tl.int64) * n_groups + group) * 2
    mask = (1 << STAT_BITS) - 1
    s = _stat(pair & mask, scale_stats_ptr, at, group_ok)
    z = _stat((pair >> STAT_BITS) & mask, zero_stats_ptr, at, group_ok)
    return s * (q - z)


@triton.jit
def _stat(code, stats_ptr, at, ok):
    """First-level statistic (fp32): its code times its run's fp16 step plus minimum (``at``: the step)."""
    step = tl.load(stats_ptr + at, mask=ok, other=0.0).to(tl.float32)
    minimum = tl.load(stats_ptr + at + 1, mask=ok, other=0.0).to(tl.float32)
    return code.to(tl.float32) * step + minimum


@triton.jit
def _outlier_bounds(ptr_ptr, rows, row_ok, out_features, BLOCK_M: tl.constexpr):
    """The program's outliers ``start .. end`` and each row's ``[row_start, row_end)`` [BLOCK_M]."""
    first = tl.program_id(0) * BLOCK_M
    start = tl.load(ptr_ptr + first)
    end = tl.load(ptr_ptr + tl.minimum(first + BLOCK_M, out_features))
    row_start = tl.load(ptr_ptr + rows, mask=row_ok, other=0)
    row_end = tl.load(ptr_ptr + rows + 1, mask=row_ok, other=0)
    return start, end, row_start, row_end


@triton.jit
def _outlier_chunk(col_ptr, delta_ptr, i0, end, row_start, row_end, CHUNK: tl.constexpr):
    """Outliers ``i0 .. i0 + CHUNK``: their columns [CHUNK], in-range mask, and deltas placed in
    their rows [BLOCK_M, CHUNK] (0 elsewhere)."""
    i = i0 + tl.arange(0, CHUNK)
    ok = i < end
    col = tl.load(col_ptr + i, mask=ok, other=0)
    delta = tl.load(delta_ptr + i, mask=ok, other=0.0)
    mine = (i[None, :] >= row_start[:, None]) & (i[None, :] < row_end[:, None])
    return col, ok, tl.where(mine, delta[None, :], 0.0)


@triton.jit
def _spqr_gemv_kernel(x_ptr, perm_ptr, words_ptr, stat_codes_ptr, scale_stats_ptr, zero_stats_ptr, ptr_ptr, col_ptr,
                      delta_ptr, bias_ptr, y_ptr, n_tokens, out_features, row_words, n_groups, stat_group_size,
                      stride_x, stride_y, BITS: tl.constexpr, STAT_BITS: tl.constexpr, CODES: tl.constexpr,
                      GROUP_WORDS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                      GROUPS: tl.constexpr, WORDS: tl.constexpr, CHUNK: tl.constexpr):
    """``BLOCK_M`` outputs of one token (grid: row tiles x tokens)."""
    rows, tokens, row_ok, token_ok = output_tile(out_features, n_tokens, BLOCK_M, 1)
    x_row = x_ptr + tokens[:, None, None, None].to(tl.int64) * stride_x
    acc = tl.zeros((BLOCK_M, GROUPS, WORDS, CODES), dtype=tl.float32)
    for w0 in range(0, row_words, GROUPS * WORDS):
        first, word = _tile_words(w0, GROUPS, WORDS)
        w = _tile_weights(words_ptr, stat_codes_ptr, scale_stats_ptr, zero_stats_ptr, rows, row_ok, first, word,
                          row_words, n_groups, stat_group_size, BITS, STAT_BITS, CODES, GROUP_WORDS)
        source = tl.load(perm_ptr + word * CODES + tl.arange(0, CODES)[None, None, None, :], mask=word < row_words,
                         other=-1)
        acc += w * tl.load(x_row + source, mask=source >= 0, other=0.0).to(tl.float32)
    start, end, row_start, row_end = _outlier_bounds(ptr_ptr, rows, row_ok, out_features, BLOCK_M)
    extra = tl.zeros((BLOCK_M, CHUNK), dtype=tl.float32)
    for i0 in range(start, end, CHUNK):
        col, ok, delta = _outlier_chunk(col_ptr, delta_ptr, i0, end, row_start, row_end, CHUNK)
        extra += delta * load_tokens(x_ptr, tokens, col, token_ok, ok, stride_x).to(tl.float32)
    y = tl.sum(tl.sum(tl.sum(acc, axis=3), axis=2), axis=1) + tl.sum(extra, axis=1)
    store_outputs(y_ptr, y[None, :], bias_ptr, tokens, rows, token_ok, row_ok, stride_y, HAS_BIAS)


@triton.jit
def _spqr_tile_kernel(x_ptr, perm_ptr, words_ptr, stat_codes_ptr, scale_stats_ptr, zero_stats_ptr, ptr_ptr, col_ptr,
                      delta_ptr, bias_ptr, y_ptr, n_tokens, out_features, row_words, n_groups, stat_group_size,
                      stride_x, stride_y, BITS: tl.constexpr, STAT_BITS: tl.constexpr, CODES: tl.constexpr,
                      GROUP_WORDS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WORDS: tl.constexpr, CHUNK: tl.constexpr):
    """``BLOCK_M`` outputs x ``BLOCK_N`` tokens (grid: row tiles x token tiles), ``tl.dot`` per step."""
    rows, tokens, row_ok, token_ok = output_tile(out_features, n_tokens, BLOCK_M, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for w0 in range(0, row_words, GROUPS * WORDS):
        first, word = _tile_words(w0, GROUPS, WORDS)
        w = _tile_weights(words_ptr, stat_codes_ptr, scale_stats_ptr, zero_stats_ptr, rows, row_ok, first, word,
                          row_words, n_groups, stat_group_size, BITS, STAT_BITS, CODES, GROUP_WORDS)
        k = w0 * CODES + tl.arange(0, GROUPS * WORDS * CODES)
        source = tl.load(perm_ptr + k, mask=k < row_words * CODES, other=-1)
        x = load_tokens(x_ptr, tokens, source, token_ok, source >= 0, stride_x)
        acc = dot_rows(acc, x, tl.reshape(w, (BLOCK_M, GROUPS * WORDS * CODES)).to(x.dtype), IEEE)
    start, end, row_start, row_end = _outlier_bounds(ptr_ptr, rows, row_ok, out_features, BLOCK_M)
    for i0 in range(start, end, CHUNK):
        col, ok, delta = _outlier_chunk(col_ptr, delta_ptr, i0, end, row_start, row_end, CHUNK)
        acc = dot_rows(acc, load_tokens(x_ptr, tokens, col, token_ok, ok, stride_x).to(tl.float32), delta, True)
    store_outputs(y_ptr, acc, bias_ptr, tokens, rows, token_ok, row_ok, stride_y, HAS_BIAS)


@register_linear_kernel("spqr", "cuda", (torch.float16, torch.bfloat16))
def spqr_linear_triton(x: torch.Tensor, weight: SpQR, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X Wᵀ + b`` for an ``SpQR`` weight (no autograd).

    Args:
        x: [..., in] fp16/bf16 on the weight's device (fp32 too: exact fp32 products, for tests).
        weight: SpQR W [out, in].
        bias: [out] or None.
    Returns:
        [..., out] in ``x.dtype``.
    """
    x2, y = token_rows(x, weight, "spqr")
    n_tokens, out_features = y.shape
    if n_tokens:
        layout = cached_layout(weight, spqr_gpu_layout)
        row_words = layout.words.shape[1]
        gemv = n_tokens == 1
        block_k = GEMV_INPUTS if gemv else TILE_INPUTS
        words = max(1, min(layout.group_words, block_k // layout.codes_per_word))  # of one group, per step
        groups = max(1, block_k // layout.codes_per_word // words)  # per step
        args = (x2, layout.perm, layout.words, layout.stat_codes, weight.scale_stats, weight.zero_stats,
                layout.outlier_ptr, layout.outlier_col, layout.outlier_delta, y if bias is None else bias, y,
                n_tokens, out_features, row_words, weight.groups, weight.stat_group_size, x2.stride(0), y.stride(0))
        shapes = dict(BITS=weight.bits, STAT_BITS=weight.stat_bits, CODES=layout.codes_per_word,
                      GROUP_WORDS=layout.group_words, HAS_BIAS=bias is not None, GROUPS=groups, WORDS=words)
        if gemv:
            _spqr_gemv_kernel[(triton.cdiv(out_features, GEMV_ROWS), n_tokens)](
                *args, **shapes, BLOCK_M=GEMV_ROWS, CHUNK=GEMV_OUTLIERS, num_warps=GEMV_WARPS)
        else:
            block_m, block_n = rows_per_program(n_tokens), tokens_per_program(n_tokens)
            _spqr_tile_kernel[(triton.cdiv(out_features, block_m), triton.cdiv(n_tokens, block_n))](
                *args, **shapes, IEEE=x.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n, CHUNK=TILE_OUTLIERS)
    return y.reshape(*x.shape[:-1], out_features)
