"""``SignMask``: a T-Switch / FlexSwitch compressed task vector of one tensor (arXiv 2412.00054).

T-Switch approximates a (sparsified) task vector ``tau`` by ``tau_hat = scale * s`` with one
scalar ``scale`` and a ternary switch ``s`` in {-1, 0, +1} elementwise: 0 where the entry was
dropped, else its sign. FlexSwitch (:mod:`sparsa.merge.methods.flexswitch`) adds ``m = magnitude_bits``
bits per nonzero: a code ``c`` into a table of ``2**m`` magnitudes, so a nonzero is
``s * scale[c]`` (``m = 0``: one magnitude, T-Switch). The tensor may have any shape with at least
one dimension (biases and LayerNorm weights are 1-D, convolutions 3-D/4-D); everything below works
on the row-major flattening of ``n = numel`` entries, of which ``nnz`` are nonzero.

Storage (all arrays uint8 except ``scale``):

* ``signs``: one bit per nonzero, row-major, 1 = negative: ``ceil(nnz / 8)`` bytes.
* ``codes``: ``m`` bits per nonzero, row-major: ``ceil(nnz * m / 8)`` bytes (none when ``m = 0``).
* ``scale``: [2**m] fp32, the magnitudes: ``4 * 2**m`` bytes.
* ``positions``: where the nonzeros are, in one of three encodings:

  - ``bitmap``: one presence bit per entry: ``ceil(n / 8)`` bytes.
  - ``group`` (T-Switch's disk layout): the flat tensor is cut into ``G = ceil(n / g)`` groups of
    ``g = group_size`` entries (the last may be short; its missing tail counts as zero). The byte
    stream is ``pack_bits(markers, 1) ++ pack_bits(occupancy, 1)``: ``markers`` is one bit per
    group (1 = the group holds a nonzero), ``occupancy`` the ``g`` presence bits of every marked
    group, in group order, concatenated. Each piece is zero-padded to whole bytes, so the cost is
    ``ceil(G / 8) + ceil(g * M / 8)`` bytes for ``M`` marked groups.
  - ``index``: delta coding of the sorted nonzero positions ``p``: gaps ``d_0 = p_0``,
    ``d_i = p_i - p_(i-1) - 1``, each in ``b = index_bits(max(d) + 1)`` bits (at least 1):
    ``ceil(nnz * b / 8)`` bytes (``b = 1`` and no bytes when there is no nonzero).

So ``nbytes = positions + ceil(nnz / 8) + ceil(nnz * m / 8) + 4 * 2**m`` and ``bits_per_param = 8 * nbytes / n``.

Since zero gaps are legal, ``nnz`` cannot be recovered from the padded ``index`` stream; it is
stored as metadata (for every encoding, where it is cross-checked against the decoded mask).
"""

import math
from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import Format, check, check_array
from sparsa.formats.bitpack import MAX_PACK_BITS, pack_bits, packed_nbytes, unpack_bits
from sparsa.formats.bitpack import index_bits as code_bits
from sparsa.formats.registry import register_format

ENCODINGS = ("bitmap", "group", "index")  # also the tie-break order of encoding="auto"
MAX_MAGNITUDE_BITS = 6  # codes + 1 must fit an int8 in the switch bank


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _tail_is_zero(packed: torch.Tensor, nbits: int) -> bool:
    """Whether the padding bits after the first ``nbits`` bits of ``packed`` (exactly
    ``ceil(nbits / 8)`` bytes) are all zero."""
    used = nbits % 8
    return used == 0 or packed.numel() == 0 or int(packed[-1]) >> used == 0


def _levels_text(scale: torch.Tensor) -> str:
    """One magnitude as a number, several as a list (for errors)."""
    return repr(float(scale[0])) if scale.numel() == 1 else repr(scale.tolist())


def _group_count(n: int, g: int) -> int:
    return -(-n // g)


def _pad_to_groups(flags: torch.Tensor, g: int) -> torch.Tensor:
    """[n] bool -> [ceil(n / g), g] bool, the short last group padded with False."""
    pad = _group_count(flags.numel(), g) * g - flags.numel()
    if pad:
        flags = torch.cat([flags, flags.new_zeros(pad)])
    return flags.view(-1, g)


def _gaps(pos: torch.Tensor) -> torch.Tensor:
    """[nnz] int64 strictly increasing positions -> [nnz] int64 gaps ``p_i - p_(i-1) - 1``
    (``p_(-1) = -1``)."""
    return torch.diff(pos, prepend=pos.new_full((1,), -1)) - 1


def _positions_nbytes(encoding: str, n: int, nnz: int, marked: int, g: int, bits: int) -> int:
    """Bytes of ``positions`` for ``encoding`` (``marked`` groups of ``g``, ``bits`` per gap)."""
    if encoding == "bitmap":
        return packed_nbytes(n, 1)
    if encoding == "group":
        return packed_nbytes(_group_count(n, g), 1) + packed_nbytes(g * marked, 1)
    return packed_nbytes(nnz, bits)


@register_format("sign_mask")
@dataclass(frozen=True, eq=False)
class SignMask(Format):
    """Signed tensor ``s * scale[c]``, ``s`` in {-1, 0, +1}, of any shape (>= 1-D).

    Attributes:
        shape: the dense tensor's shape, one or more positive ints.
        encoding: "bitmap" | "group" | "index": how ``positions`` stores the nonzero positions.
        nnz: number of nonzeros of ``s``.
        positions: [P] uint8, the packed position code of ``encoding`` (see the module docstring).
        signs: [ceil(nnz / 8)] uint8, 1 bit per nonzero in row-major order, 1 = negative.
        codes: [ceil(nnz * magnitude_bits / 8)] uint8, each nonzero's magnitude index, row-major.
        scale: [2**magnitude_bits] fp32, finite: the magnitudes.
        group_size: ``g`` of the group encoding (kept for every encoding, used only by "group").
        index_bits: bits per gap of the index encoding (1..32); 0 for the other encodings.
        magnitude_bits: ``m`` in 0..7, bits of each code (0: T-Switch's one scale).
    """

    ARRAYS = ("positions", "signs", "codes", "scale")

    shape: tuple[int, ...]
    encoding: str
    nnz: int
    positions: torch.Tensor
    signs: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    group_size: int = 4
    index_bits: int = 0
    magnitude_bits: int = 0

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_ternary(cls, t: torch.Tensor, scale, *, codes: torch.Tensor | None = None, encoding: str = "auto",
                     group_size: int = 4, where: str = "SignMask.from_ternary") -> "SignMask":
        """Encode ``t * scale[codes]`` for a ternary ``t`` (``scale * t`` for one scale).

        Args:
            t: any shape (>= 1-D, no zero dims), float/int/bool, every value in {-1, 0, +1}.
            scale: a float, or ``2**m`` magnitudes (a sequence or 1-D tensor, ``m`` in 0..7), each
                representable as a finite fp32.
            codes: [nnz] integers in ``[0, 2**m)``, the magnitude index of each nonzero of ``t`` in
                row-major order; None when there is one magnitude.
            encoding: one of ``ENCODINGS`` or "auto": the one with the fewest ``nbytes``
                (ties broken bitmap < group < index).
            group_size: ``g >= 1`` of the group encoding.
            where: names the tensor in errors.
        """
        check(isinstance(t, torch.Tensor), where, f"expected a tensor, got {type(t).__name__}")
        check(t.dim() >= 1 and t.numel() > 0, where, f"tensor shape {list(t.shape)} is not one or more positive sizes")
        check(not t.is_complex(), where, f"tensor dtype {t.dtype} is complex")
        check(encoding == "auto" or encoding in ENCODINGS, where,
              f"encoding {encoding!r} is not one of auto, {', '.join(ENCODINGS)}")
        check(_is_int(group_size) and group_size >= 1, where, f"group_size {group_size!r} is not a positive integer")
        scale_t = torch.as_tensor(scale, dtype=torch.float64).detach().cpu().reshape(-1)
        levels = scale_t.numel()
        m = levels.bit_length() - 1
        check(levels >= 1 and levels == 1 << m and m <= MAX_MAGNITUDE_BITS, where,
              f"scale holds {levels} magnitudes, expected 2**m for m in 0..{MAX_MAGNITUDE_BITS}")
        check(bool(torch.isfinite(scale_t).all()) and bool(torch.isfinite(scale_t.float()).all()), where,
              f"scale {_levels_text(scale_t)} is not a finite fp32 number")
        scale_t = scale_t.float()

        flat = t.detach().reshape(-1)
        if not flat.is_floating_point():
            flat = flat.to(torch.int64)  # bool -> 0/1; uint8 255 must not compare equal to -1
        bad = ~((flat == 0) | (flat == 1) | (flat == -1))
        if bool(bad.any()):
            first = flat[bad][0].item()
            raise SparsaError(f"{where}: values must be in {{-1, 0, +1}}, found {first!r} "
                              f"({int(bad.sum())} of {flat.numel()} entries outside)")

        n, g = flat.numel(), group_size
        flags = flat != 0  # [n] bool
        pos = flags.nonzero().squeeze(1)  # [nnz] int64, increasing
        nnz = pos.numel()
        groups = _pad_to_groups(flags, g)  # [G, g]
        markers = groups.any(dim=1)  # [G]
        marked = int(markers.sum())
        gaps = _gaps(pos)
        bits = code_bits(int(gaps.max()) + 1) if nnz else 1

        if encoding == "auto":
            candidates = [e for e in ENCODINGS if e != "index" or bits <= MAX_PACK_BITS]
            encoding = min(candidates, key=lambda e: _positions_nbytes(e, n, nnz, marked, g, bits))
        check(encoding != "index" or bits <= MAX_PACK_BITS, where,
              f"index encoding needs {bits} bits per gap, more than {MAX_PACK_BITS}")

        if m == 0:
            check(codes is None or bool((torch.as_tensor(codes) == 0).all()), where,
                  "codes given for a single magnitude")
            codes = torch.zeros(nnz, dtype=torch.int64)
        check(codes is not None, where, f"{levels} magnitudes need codes, one per nonzero")
        codes = torch.as_tensor(codes).reshape(-1).cpu()
        check(codes.numel() == nnz and not codes.is_floating_point() and not codes.is_complex(), where,
              f"codes has {codes.numel()} {codes.dtype} entries, expected {nnz} integers (one per nonzero)")
        check(nnz == 0 or (int(codes.min()) >= 0 and int(codes.max()) < levels), where,
              f"codes must lie in [0, {levels})")

        if encoding == "bitmap":
            positions = pack_bits(flags, 1)
        elif encoding == "group":
            positions = torch.cat([pack_bits(markers, 1), pack_bits(groups[markers].reshape(-1), 1)])
        else:
            positions = pack_bits(gaps, bits)
        return cls(shape=tuple(t.shape), encoding=encoding, nnz=nnz, positions=positions,
                   signs=pack_bits(flat[flags] < 0, 1), codes=(pack_bits(codes, m) if m else torch.zeros(0, dtype=torch.uint8)).to(t.device),
                   scale=scale_t.to(t.device), group_size=group_size, index_bits=bits if encoding == "index" else 0,
                   magnitude_bits=m)

    @classmethod
    def from_dense(cls, tau_masked: torch.Tensor, scale: float, **kw) -> "SignMask":
        """``from_ternary(torch.sign(tau_masked), scale, **kw)``: keep the sign of each nonzero."""
        return cls.from_ternary(torch.sign(tau_masked), scale, **kw)

    # -- decoding ---------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        """Entries of the dense tensor: the product of ``shape``."""
        return math.prod(self.shape)

    @property
    def bits_per_param(self) -> float:
        """``8 * nbytes / numel``."""
        return 8 * self.nbytes / self.numel

    def nonzero_positions(self) -> torch.Tensor:
        """[nnz] int64 row-major positions of the nonzeros, increasing."""
        n, g = self.numel, self.group_size
        if self.encoding == "bitmap":
            return unpack_bits(self.positions, 1, n).nonzero().squeeze(1)
        if self.encoding == "group":
            G = _group_count(n, g)
            mb = packed_nbytes(G, 1)
            markers = unpack_bits(self.positions[:mb], 1, G).bool()
            marked = int(markers.sum())
            groups = torch.zeros(G, g, dtype=torch.uint8, device=self.positions.device)
            groups[markers] = unpack_bits(self.positions[mb:], 1, g * marked).view(marked, g)
            return groups.reshape(-1).nonzero().squeeze(1)
        gaps = unpack_bits(self.positions, self.index_bits, self.nnz).long()
        return torch.cumsum(gaps + 1, dim=0) - 1

    def ternary(self) -> torch.Tensor:
        """The switch ``s``: int8 of ``shape``, values in {-1, 0, +1}."""
        flat = torch.zeros(self.numel, dtype=torch.int8, device=self.positions.device)
        negative = unpack_bits(self.signs, 1, self.nnz).to(torch.int8)
        flat[self.nonzero_positions()] = 1 - 2 * negative
        return flat.view(self.shape)

    def magnitude_codes(self) -> torch.Tensor:
        """[nnz] int64, each nonzero's index into ``scale``, row-major."""
        if self.magnitude_bits == 0:
            return torch.zeros(self.nnz, dtype=torch.int64, device=self.codes.device)
        return unpack_bits(self.codes, self.magnitude_bits, self.nnz).long()

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``ternary() * scale[codes]``, computed in fp32, returned in ``dtype`` (default fp32)."""
        flat = self.ternary().reshape(-1).to(torch.float32)
        pos = self.nonzero_positions()
        flat[pos] *= self.scale.to(flat.device)[self.magnitude_codes().to(flat.device)]
        return flat.view(self.shape).to(dtype or torch.float32)

    # -- validation -------------------------------------------------------------------------
    def validate(self, where: str) -> None:
        shape = self.shape
        check(isinstance(shape, tuple) and len(shape) >= 1 and all(_is_int(s) and s > 0 for s in shape),
              where, f"shape {shape!r} is not one or more positive integers")
        check(self.encoding in ENCODINGS, where, f"encoding {self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        g, b, n, nnz = self.group_size, self.index_bits, self.numel, self.nnz
        check(_is_int(g) and g >= 1, where, f"group_size {g!r} is not a positive integer")
        if self.encoding == "index":
            check(_is_int(b) and 1 <= b <= MAX_PACK_BITS, where,
                  f"index_bits {b!r} is not an integer in [1, {MAX_PACK_BITS}]")
        else:
            check(b == 0 and _is_int(b), where, f"index_bits is {b!r}, expected 0 for the {self.encoding} encoding")
        check(_is_int(nnz) and 0 <= nnz <= n, where, f"nnz {nnz!r} is not an integer in [0, {n}]")

        m = self.magnitude_bits
        check(_is_int(m) and 0 <= m <= MAX_MAGNITUDE_BITS, where,
              f"magnitude_bits {m!r} is not an integer in [0, {MAX_MAGNITUDE_BITS}]")
        check_array(self.scale, where, "scale", (torch.float32,), (1 << m,))
        check(bool(torch.isfinite(self.scale).all()), where, f"scale {_levels_text(self.scale)} is not finite")
        check_array(self.codes, where, "codes", (torch.uint8,), (packed_nbytes(nnz * m, 1),))
        check(_tail_is_zero(self.codes, nnz * m), where, "codes has nonzero padding bits")
        check_array(self.signs, where, "signs", (torch.uint8,), (packed_nbytes(nnz, 1),))
        check(_tail_is_zero(self.signs, nnz), where, "signs has nonzero padding bits")

        pos = self.positions
        check(isinstance(pos, torch.Tensor), where, "positions is not a tensor")
        check(pos.dtype == torch.uint8 and pos.dim() == 1, where,
              f"positions must be 1-D uint8, got {list(pos.shape)} {pos.dtype}")
        getattr(self, f"_validate_{self.encoding}")(where)

    def _validate_bitmap(self, where: str) -> None:
        n = self.numel
        check_array(self.positions, where, "positions", (torch.uint8,), (packed_nbytes(n, 1),))
        check(_tail_is_zero(self.positions, n), where, "positions has nonzero padding bits")
        found = int(unpack_bits(self.positions, 1, n).sum())
        check(found == self.nnz, where, f"positions marks {found} nonzeros but nnz is {self.nnz}")

    def _validate_group(self, where: str) -> None:
        n, g, pos = self.numel, self.group_size, self.positions
        G = _group_count(n, g)
        mb = packed_nbytes(G, 1)
        check(pos.numel() >= mb, where, f"positions has {pos.numel()} bytes, fewer than the {mb} marker bytes "
                                        f"of {G} groups")
        markers = unpack_bits(pos[:mb], 1, G).bool()
        marked = int(markers.sum())
        want = mb + packed_nbytes(g * marked, 1)
        check(pos.numel() == want, where, f"positions has {pos.numel()} bytes, expected {want} "
                                          f"({G} group markers + occupancy of {marked} marked groups of {g})")
        check(_tail_is_zero(pos[:mb], G), where, "positions has nonzero padding bits after the group markers")
        check(_tail_is_zero(pos[mb:], g * marked), where, "positions has nonzero padding bits after the occupancy")
        occupancy = unpack_bits(pos[mb:], 1, g * marked).view(marked, g)
        empty = ~occupancy.bool().any(dim=1)
        if bool(empty.any()):
            first = int(markers.nonzero().squeeze(1)[empty][0])
            raise SparsaError(f"{where}: group {first} is marked but has no occupancy bits set")
        groups = torch.zeros(G, g, dtype=torch.uint8, device=pos.device)
        groups[markers] = occupancy
        flat = groups.reshape(-1)
        check(not bool(flat[n:].any()), where, f"occupancy bits set past the end of the tensor (numel {n})")
        found = int(flat.sum())
        check(found == self.nnz, where, f"positions marks {found} nonzeros but nnz is {self.nnz}")

    def _validate_index(self, where: str) -> None:
        n, b, nnz = self.numel, self.index_bits, self.nnz
        check_array(self.positions, where, "positions", (torch.uint8,), (packed_nbytes(nnz, b),))
        check(_tail_is_zero(self.positions, nnz * b), where, "positions has nonzero padding bits")
        if nnz:
            last = int(self.nonzero_positions()[-1])  # gaps >= 0, so positions strictly increase
            check(last < n, where, f"index positions reach {last}, past numel {n}")
