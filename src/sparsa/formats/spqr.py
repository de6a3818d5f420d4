"""``SpQR``: sparse-quantized representation (Dettmers et al., arXiv 2306.03078, §3-4).

SpQR stores ``W: [out, in]`` as small groups of low-bit codes whose own statistics are
quantized again, plus a few unstructured fp16 outliers:

* the input columns are reordered by ``perm`` (GPTQ "act-order"); ``codes`` holds the
  ``bits``-bit code of every weight in that permuted order;
* each row is cut into first-level groups of β1 = ``group_size`` permuted columns; group
  ``(r, g)`` has a scale ``s`` and a zero-point ``z`` (paper eq. 4);
* ``s`` and ``z`` are themselves min-max quantized to ``stat_bits``-bit codes over runs of
  β2 = ``stat_group_size`` rows (same ``g``), each run storing an fp16 (step, minimum);
* outliers (CSR over rows, original column order) overwrite the dequantized weight.

Decode, all in fp32 (``b = r // β2``, ``g = k // β1``)::

    s[r, g]  = scale_codes[r, g] * scale_stats[b, g, 0] + scale_stats[b, g, 1]
    z[r, g]  = zero_codes[r, g]  * zero_stats[b, g, 0]  + zero_stats[b, g, 1]
    Wp[r, k] = s[r, g] * (codes[r, k] - z[r, g])
    W[:, perm[k]] = Wp[:, k];   W[r, outlier_col[i]] = outlier_values[i]

Storage: ``bits + 2*stat_bits/β1 + 64/(β1·β2)`` bits/param, plus 32 bits per outlier (fp16
value + 16-bit column, as the paper counts; the column widens to 32 bits past 32768 inputs),
and metadata the paper leaves out, bit-packed to the narrowest width: ceil(log2(in + 1))
bits per row (its outlier count) and ceil(log2 in) bits per input column (perm). E.g. 3-bit
codes with β1 = β2 = 16 cost 3.625 bits/param + outliers + 10/in + 10/out for in = 576.
"""

from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import Format, check, check_array
from sparsa.formats.bitpack import index_bits, pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.block_sparse import column_dtype
from sparsa.formats.quant import MAX_BITS, MIN_BITS, check_group_size
from sparsa.formats.registry import register_format


def check_stat_group_size(out_features: int, stat_group_size: int, where: str) -> None:
    """Raise unless ``stat_group_size`` is a positive integer dividing ``out_features``."""
    if not isinstance(stat_group_size, int) or stat_group_size <= 0 or out_features % stat_group_size:
        hint = next(b for b in (16, 8, 4, 2, 1) if out_features % b == 0)
        raise SparsaError(f"{where}: out_features={out_features} % stat_group_size={stat_group_size} != 0; "
                          f"try stat_group_size={hint}")


def decode_stats(codes: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Second-level decode: codes [out, G] uint8, stats [T, G, 2] fp16 (step, minimum) -> [out, G] fp32."""
    T, G, _ = stats.shape
    q = codes.reshape(T, -1, G).float()  # [T, β2, G]
    v = q * stats[:, None, :, 0].float() + stats[:, None, :, 1].float()
    return v.reshape(-1, G)  # [out, G]


def second_level_quantize(v: torch.Tensor, bits: int, group_rows: int, *, where: str = "statistics"):
    """Min-max quantize first-level statistics over runs of ``group_rows`` rows (paper §4.1).

    Args:
        v: [out, G] float, one statistic (scale or zero-point) per row and first-level group.
        bits: 2..8 bits per second-level code.
        group_rows: β2, rows per run; divides ``out``.
        where: names the tensor in errors.
    Returns:
        codes [out, G] uint8 in [0, 2**bits), stats [out / β2, G, 2] fp16 (step, minimum),
        v_hat [out, G] fp32, exactly what :class:`SpQR` decodes from (codes, stats).
    """
    if not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
        raise SparsaError(f"{where}: stat_bits={bits!r} outside {MIN_BITS}..{MAX_BITS}")
    if v.dim() != 2:
        raise SparsaError(f"{where}: statistics must be [out, G], got {list(v.shape)}")
    check_stat_group_size(v.shape[0], group_rows, where)
    out_features, groups = v.shape
    v3 = v.float().reshape(out_features // group_rows, group_rows, groups)  # [T, β2, G]
    lo, hi = v3.amin(dim=1), v3.amax(dim=1)  # [T, G]
    qmax = 2**bits - 1
    step = ((hi - lo) / qmax).to(torch.float16)
    minimum = lo.to(torch.float16)
    if not (torch.isfinite(step).all() and torch.isfinite(minimum).all()):
        raise SparsaError(f"{where}: statistics beyond the fp16 range (|v| > 65504) or non-finite; "
                          "cannot store fp16 second-level statistics")
    # A constant (or fp16-underflowing) run stores step 0: every code is 0 and decodes to the minimum.
    divisor = torch.where(step > 0, step.float(), torch.ones_like(lo))
    codes = torch.round((v3 - minimum.float()[:, None]) / divisor[:, None]).clamp_(0, qmax)
    codes = torch.where(step[:, None] > 0, codes, torch.zeros_like(codes))
    codes = codes.to(torch.uint8).reshape(out_features, groups)
    stats = torch.stack([step, minimum], dim=-1)  # [T, G, 2]
    return codes, stats, decode_stats(codes, stats)


def index_dtype(in_features: int) -> torch.dtype:
    """int16 when every column index fits (in <= 32768), else int32."""
    return column_dtype(in_features)


def count_bits(in_features: int) -> int:
    """Bits of one row's outlier count, 0..in."""
    return index_bits(in_features + 1)


def is_permutation(perm: torch.Tensor, n: int) -> bool:
    """Whether ``perm`` is a 1-D integer tensor holding each of 0..n-1 exactly once."""
    if perm.dim() != 1 or perm.numel() != n or perm.is_floating_point():
        return False
    return torch.equal(perm.long().sort().values, torch.arange(n, device=perm.device))


def check_parts_codes(t: torch.Tensor, bits: int, name: str, shape, where: str) -> None:
    """Raise unless ``t`` is an integer tensor of ``shape`` with values in [0, 2**bits)."""
    check(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(shape), where,
          f"{name} must have shape {list(shape)}, got {list(getattr(t, 'shape', []))}")
    check(not t.is_floating_point() and t.dtype != torch.bool, where, f"{name} must be integer, got {t.dtype}")
    check(t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < 2**bits), where,
          f"{name} holds a code outside [0, {2**bits})")


@register_format("spqr")
@dataclass(frozen=True, eq=False)
class SpQR(Format):
    """SpQR weight (see the module docstring for the decode).

    Attributes:
        shape: (out, in).
        bits: bits per weight code, 2..8.
        group_size: β1, permuted input columns per first-level group; divides ``in``.
        stat_bits: bits per second-level code of the statistics, 2..8 (3 in the paper).
        stat_group_size: β2, rows per second-level run; divides ``out``.
        codes: [ceil(out * in * bits / 8)] uint8, [out, in] codes packed row-major, permuted columns.
        scale_codes, zero_codes: [ceil(out * G * stat_bits / 8)] uint8, [out, G] codes packed row-major.
        scale_stats, zero_stats: [T, G, 2] fp16, (step, minimum) per run of β2 rows.
        outlier_counts: [ceil(out * count_bits(in) / 8)] uint8, outliers per row packed at
            ceil(log2(in + 1)) bits; their running sum gives the CSR row pointers.
        outlier_col: [nnz] int16 (int32 past 32768 inputs), original column, ascending per row.
        outlier_values: [nnz] fp16, weights that overwrite the dequantized ones.
        perm: [ceil(in * ceil(log2 in) / 8)] uint8, packed; permuted column k is original column perm[k].
    """

    ARRAYS = ("codes", "scale_codes", "zero_codes", "scale_stats", "zero_stats",
              "outlier_counts", "outlier_col", "outlier_values", "perm")

    bits: int
    group_size: int
    stat_bits: int
    stat_group_size: int
    codes: torch.Tensor
    scale_codes: torch.Tensor
    zero_codes: torch.Tensor
    scale_stats: torch.Tensor
    zero_stats: torch.Tensor
    outlier_counts: torch.Tensor
    outlier_col: torch.Tensor
    outlier_values: torch.Tensor
    perm: torch.Tensor

    @property
    def groups(self) -> int:
        """G, first-level groups per row."""
        return self.shape[1] // self.group_size

    @property
    def runs(self) -> int:
        """T, second-level runs of rows."""
        return self.shape[0] // self.stat_group_size

    @classmethod
    def from_parts(cls, *, codes, scale_codes, zero_codes, scale_stats, zero_stats, outlier_mask,
                   outlier_values_dense, perm, bits: int, group_size: int, stat_bits: int,
                   stat_group_size: int, where: str = "weight") -> "SpQR":
        """Pack solver output into the stored layout.

        Args:
            codes: [out, in] integer in [0, 2**bits), permuted column order.
            scale_codes, zero_codes: [out, G] integer in [0, 2**stat_bits).
            scale_stats, zero_stats: [out / β2, G, 2] fp16 (step, minimum).
            outlier_mask: [out, in] bool, original column order, True where an outlier is kept.
            outlier_values_dense: [out, in] float, read at the mask's True positions, stored as fp16.
            perm: [in] integer, a permutation of range(in).
        """
        check(isinstance(codes, torch.Tensor) and codes.dim() == 2, where, "codes must be [out, in]")
        out_features, in_features = shape = tuple(codes.shape)
        check(isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS, where, f"bits={bits!r} outside 2..8")
        check(isinstance(stat_bits, int) and MIN_BITS <= stat_bits <= MAX_BITS, where,
              f"stat_bits={stat_bits!r} outside 2..8")
        check_group_size(in_features, group_size, where)
        groups = (out_features, in_features // group_size)
        check_parts_codes(codes, bits, "codes", shape, where)
        check_parts_codes(scale_codes, stat_bits, "scale_codes", groups, where)
        check_parts_codes(zero_codes, stat_bits, "zero_codes", groups, where)
        for name, t in (("outlier_mask", outlier_mask), ("outlier_values_dense", outlier_values_dense)):
            check(isinstance(t, torch.Tensor) and tuple(t.shape) == shape, where,
                  f"{name} must have shape {list(shape)}")
        check(outlier_mask.dtype == torch.bool, where, f"outlier_mask must be bool, got {outlier_mask.dtype}")
        check(isinstance(perm, torch.Tensor) and is_permutation(perm, in_features), where,
              f"perm is not a permutation of range({in_features})")
        rows, cols = outlier_mask.nonzero(as_tuple=True)  # row-major order
        per_row = torch.bincount(rows, minlength=out_features)
        fmt = cls(shape=shape, bits=bits, group_size=group_size, stat_bits=stat_bits,
                  stat_group_size=stat_group_size, codes=pack_bits(codes, bits),
                  scale_codes=pack_bits(scale_codes, stat_bits), zero_codes=pack_bits(zero_codes, stat_bits),
                  scale_stats=scale_stats, zero_stats=zero_stats,
                  outlier_counts=pack_bits(per_row, count_bits(in_features)),
                  outlier_col=cols.to(index_dtype(in_features)),
                  outlier_values=outlier_values_dense[outlier_mask].to(torch.float16),
                  perm=pack_bits(perm, index_bits(in_features)))
        fmt.validate(where)
        return fmt

    # -- accessors (kernels read these) ------------------------------------------------
    def unpacked_codes(self) -> torch.Tensor:
        """[out, in] uint8 weight codes, permuted column order."""
        return unpack_bits(self.codes, self.bits, self.numel).view(self.shape)

    def first_level_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, z): [out, G] fp32 first-level scale and zero-point."""
        n = self.shape[0] * self.groups
        scale_codes = unpack_bits(self.scale_codes, self.stat_bits, n)
        zero_codes = unpack_bits(self.zero_codes, self.stat_bits, n)
        return decode_stats(scale_codes, self.scale_stats), decode_stats(zero_codes, self.zero_stats)

    def outlier_rowptr(self) -> torch.Tensor:
        """[out + 1] int64 CSR row pointers into ``outlier_col`` / ``outlier_values``."""
        counts = unpack_bits(self.outlier_counts, count_bits(self.shape[1]), self.shape[0]).long()
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def outliers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows int64 [nnz], cols int64 [nnz], values fp16 [nnz]), row-major order."""
        counts = self.outlier_rowptr().diff()
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)
        return rows, self.outlier_col.long(), self.outlier_values

    def permutation(self) -> torch.Tensor:
        """[in] int64; permuted column k is original column ``perm[k]``."""
        return unpack_bits(self.perm, index_bits(self.shape[1]), self.shape[1]).long()

    def outlier_free_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every kernel layout makes of the codes and outliers: (codes [out, in] uint8, permuted
        columns, with the code under each outlier set to the one nearest its zero-point, so the
        weight it dequantizes to is small (at most ``s / 2`` when the zero-point is in the code
        range) and nothing large cancels; each outlier's permuted
        column [nnz] int64, row-major; and its delta [nnz] fp32: the stored value minus the weight
        those codes dequantize to). The kernels add ``delta * x[column]`` to the code's product."""
        perm = self.permutation()
        position = torch.empty_like(perm)
        position[perm] = torch.arange(perm.numel(), device=perm.device)  # original column -> permuted
        rows, cols, values = self.outliers()
        pos = position[cols]
        s, z = self.first_level_stats()
        q = self.unpacked_codes().clone()
        g = pos // self.group_size
        q[rows, pos] = torch.round(z[rows, g]).clamp(0, 2**self.bits - 1).to(torch.uint8)
        return q, pos, values.float() - s[rows, g] * (q[rows, pos].float() - z[rows, g])

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out_features, in_features = self.shape
        s, z = self.first_level_stats()  # [out, G] each
        q = self.unpacked_codes().view(out_features, self.groups, self.group_size).float()
        Wp = (s[..., None] * (q - z[..., None])).view(self.shape)  # [out, in], permuted columns
        W = torch.empty_like(Wp)
        W[:, self.permutation()] = Wp
        rows, cols, values = self.outliers()
        W[rows, cols] = values.float()
        return W.to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(isinstance(self.bits, int) and MIN_BITS <= self.bits <= MAX_BITS, where,
              f"bits={self.bits!r} outside {MIN_BITS}..{MAX_BITS}")
        check(isinstance(self.stat_bits, int) and MIN_BITS <= self.stat_bits <= MAX_BITS, where,
              f"stat_bits={self.stat_bits!r} outside {MIN_BITS}..{MAX_BITS}")
        check(isinstance(self.group_size, int), where, f"group_size={self.group_size!r} is not an integer")
        check_group_size(self.shape[1], self.group_size, where)
        check_stat_group_size(self.shape[0], self.stat_group_size, where)
        self._validate_arrays(where)
        self._validate_outliers(where)
        check(is_permutation(self.permutation(), self.shape[1]), where,
              f"perm is not a permutation of range({self.shape[1]})")

    def _validate_arrays(self, where: str) -> None:
        """Dtypes and exact shapes of every array; finite statistics."""
        for name in self.ARRAYS:
            check(isinstance(getattr(self, name), torch.Tensor), where, f"{name} is not a tensor")
        (out_features, in_features), groups = self.shape, self.groups
        stat_codes = (packed_nbytes(out_features * groups, self.stat_bits),)
        check_array(self.codes, where, "codes", (torch.uint8,), (packed_nbytes(self.numel, self.bits),))
        check_array(self.scale_codes, where, "scale_codes", (torch.uint8,), stat_codes)
        check_array(self.zero_codes, where, "zero_codes", (torch.uint8,), stat_codes)
        for name in ("scale_stats", "zero_stats"):
            stats = getattr(self, name)
            check_array(stats, where, name, (torch.float16,), (self.runs, groups, 2))
            check(bool(torch.isfinite(stats).all()), where, f"{name} holds inf/nan")
        check_array(self.perm, where, "perm", (torch.uint8,), (packed_nbytes(in_features, index_bits(in_features)),))

    def _validate_outliers(self, where: str) -> None:
        """CSR structure: row counts of at most ``in`` summing to nnz, columns in range and ascending per row."""
        (out_features, in_features), nnz = self.shape, self.outlier_col.numel()
        check_array(self.outlier_counts, where, "outlier_counts", (torch.uint8,),
                    (packed_nbytes(out_features, count_bits(in_features)),))
        check_array(self.outlier_col, where, "outlier_col", (index_dtype(in_features),), (nnz,))
        check_array(self.outlier_values, where, "outlier_values", (torch.float16,), (nnz,))
        check(bool(torch.isfinite(self.outlier_values).all()), where, "outlier_values holds inf/nan")
        rowptr = self.outlier_rowptr()
        check(int(rowptr[-1]) == nnz and bool((rowptr.diff() <= in_features).all()), where,
              f"outlier_counts must be at most in={in_features} per row and sum to nnz={nnz}")
        rows, cols, _ = self.outliers()
        check(bool(((cols >= 0) & (cols < in_features)).all()), where,
              f"outlier_col holds a column outside [0, {in_features})")
        same_row = rows[1:] == rows[:-1]
        check(bool((cols.diff()[same_row] > 0).all()), where, "outlier_col is not strictly increasing within a row")
