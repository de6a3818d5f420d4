"""``KQuant``: a weight in one of ggml's k-quant types, stored as ggml's own block bytes.

Each row of ``W: [out, in]`` (``in`` a multiple of 256) is cut into super-blocks of 256 weights:

* **Q4_K / Q5_K** (144 / 176 bytes): fp16 ``d`` and ``dmin``; 8 sub-blocks of 32, each with a 6-bit
  scale ``sc`` and a 6-bit minimum ``m`` (12 bytes, ggml's packing); 4- or 5-bit codes ``q``:
  ``w = (d * sc) * q - dmin * m``.
* **Q6_K** (210 bytes): 16 sub-blocks of 16 with an int8 scale ``sc``; fp16 ``d``; 6-bit codes:
  ``w = (d * sc) * (q - 32)``.

The array is the rows' block bytes exactly as a GGUF file holds them, so ``nbytes`` is the GGUF
tensor's size and export copies it. :meth:`KQuant.to_dense` follows the ``gguf`` package's
dequantizers operation for operation (fp32), which the tests hold it to; :func:`pack` and
:func:`unpack` convert between the bytes and the fields ``(d, dmin, sc, m, q)``.
"""

from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError
from sparsa.formats.base import Format, check, check_array
from sparsa.formats.quant import grid_codes
from sparsa.formats.registry import register_format

SUPER = 256


@dataclass(frozen=True)
class KType:
    """One k-quant type: code bits, weights per sub-block, bytes per super-block, and whether it
    stores minimums (Q4_K, Q5_K) or centres codes (Q6_K)."""

    name: str
    bits: int
    sub: int
    block_bytes: int
    minimums: bool

    @property
    def subs(self) -> int:
        return SUPER // self.sub


K_TYPES = {t.name.lower(): t for t in (KType("Q4_K", 4, 32, 144, True), KType("Q5_K", 5, 32, 176, True),
                                       KType("Q6_K", 6, 16, 210, False))}


def _fp16_to_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(*x.shape, 2)


def _bytes_to_fp16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16)[..., 0]


def pack(kind: str, d, dmin, sc, m, q) -> torch.Tensor:
    """Block bytes uint8 [n, block_bytes] of n super-blocks.

    Args:
        d, dmin: [n] fp16 (``dmin`` None for Q6_K).
        sc, m: [n, subs] integer: 6-bit scales and minimums (Q4_K, Q5_K; ``m`` None for Q6_K),
            or int8 scales (Q6_K).
        q: [n, 256] integer codes in ``[0, 2**bits)``.
    """
    t = K_TYPES[kind]
    n = q.shape[0]
    q = q.to(torch.uint8)
    if not t.minimums:
        low, high = (q & 0x0F).view(n, 2, 2, 64), (q >> 4).view(n, 2, 4, 32)
        ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
        qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
        return torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), _fp16_to_bytes(d)], dim=1)
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    scales = torch.cat([(sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6), (m[:, :4] & 0x3F) | ((m[:, 4:] >> 4) << 6),
                        (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], dim=1)
    subs = q.view(n, 4, 2, 32)
    parts = [_fp16_to_bytes(d), _fp16_to_bytes(dmin), scales]
    if t.bits == 5:
        high = (q >> 4).view(n, 8, 32)
        parts.append(sum(high[:, i] << i for i in range(8)).to(torch.uint8))
        subs = subs & 0x0F
    parts.append((subs[:, :, 0] | (subs[:, :, 1] << 4)).reshape(n, 128))
    return torch.cat(parts, dim=1)


def super_scales(kind: str, blocks: torch.Tensor):
    """``(d, dmin)`` [n] fp16 of block bytes [n, block_bytes], read without decoding the codes
    (``dmin`` None for Q6_K)."""
    if not K_TYPES[kind].minimums:
        return _bytes_to_fp16(blocks[:, 208:210]), None
    return _bytes_to_fp16(blocks[:, :2]), _bytes_to_fp16(blocks[:, 2:4])


def unpack(kind: str, blocks: torch.Tensor):
    """``(d, dmin, sc, m, q)`` of block bytes [n, block_bytes] (the inverse of :func:`pack`; int64
    ``sc``, ``m``, ``q``; ``dmin`` and ``m`` None for Q6_K)."""
    t = K_TYPES[kind]
    n = blocks.shape[0]
    if not t.minimums:
        ql, qh, sc = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
        low = torch.stack([ql.view(n, 2, 64) & 0x0F, ql.view(n, 2, 64) >> 4], dim=2).reshape(n, 256)
        high = torch.stack([(qh.view(n, 2, 32) >> s) & 0x03 for s in (0, 2, 4, 6)], dim=2).reshape(n, 256)
        q = low.long() | (high.long() << 4)
        return super_scales(kind, blocks)[0], None, sc.contiguous().view(torch.int8).long(), None, q
    scales = blocks[:, 4:16].long()
    a, b, c = scales[:, :4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], dim=1)
    m = torch.cat([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], dim=1)
    at, high = 16, 0
    if t.bits == 5:
        qh = blocks[:, 16:48].long()
        high = torch.stack([(qh >> i) & 1 for i in range(8)], dim=1).reshape(n, 256) << 4
        at = 48
    qs = blocks[:, at:at + 128].long().view(n, 4, 32)
    q = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(n, 256) | high
    return *super_scales(kind, blocks), sc, m, q


def decode_blocks(kind: str, blocks: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 256] weights of block bytes [n, block_bytes], in the ``gguf`` package's operation order."""
    t = K_TYPES[kind]
    d, dmin, sc, m, q = unpack(kind, blocks)
    n = blocks.shape[0]
    scale = (d.float()[:, None] * sc.float()).reshape(n, t.subs, 1)
    if not t.minimums:
        return (scale * (q - 32).float().reshape(n, t.subs, t.sub)).reshape(n, SUPER)
    offset = (dmin.float()[:, None] * m.float()).reshape(n, t.subs, 1)
    return (scale * q.float().reshape(n, t.subs, t.sub) - offset).reshape(n, SUPER)


def super_scale(values: torch.Tensor, weight: torch.Tensor, top: int, steps: int = 9) -> torch.Tensor:
    """The fp16 super-block scale ``d`` [n] whose codes ``round(values / d)`` in ``0..top`` best
    represent ``values`` [n, subs] (>= 0) in the ``weight``-ed [n, subs] squared error: the plain
    ``max / top``, or ``max`` over ``top + k/10`` codes for ``|k| <= steps``, each refit by weighted
    least squares on its own codes (never worse than the plain rule, which is a candidate)."""
    values, weight = values.float(), weight.float()

    def error_of(d: torch.Tensor) -> torch.Tensor:
        step = d.float()[:, None]
        q = torch.where(step > 0, values / torch.where(step > 0, step, 1), 0).round().clamp(0, top)
        return (weight * (values - step * q) ** 2).sum(-1)

    peak = values.amax(dim=1)
    best = (peak / top).to(torch.float16)
    best_err = error_of(best)
    for k in range(-steps, steps + 1):
        step = peak / (top + 0.1 * k)
        q = torch.where(step[:, None] > 0, values / torch.where(step > 0, step, 1)[:, None], 0).round().clamp(0, top)
        denom = (weight * q * q).sum(-1)
        d = torch.where(denom > 0, (weight * q * values).sum(-1) / denom.clamp(min=1e-30), step).to(torch.float16)
        err = error_of(d)
        better = err < best_err
        best, best_err = torch.where(better, d, best), torch.where(better, err, best_err)
    return best


def fit_grid(kind: str, W: torch.Tensor, sub_grid: tuple[torch.Tensor, torch.Tensor] | None = None,
             sub_weight: tuple[torch.Tensor, torch.Tensor] | None = None):
    """A k-quant grid for ``W`` [n, 256] (rows of super-blocks): per sub-block a grid, its scale
    (and minimum) then rounded to 6 bits (int8 for Q6_K) against the super-block's fp16 ``d`` (and
    ``dmin``).

    Args:
        sub_grid: ``(scale, minimum)`` [n, subs] of each sub-block before that rounding (``w = q *
            scale + minimum``, codes from 0; Q4_K/Q5_K minimums <= 0, Q6_K's ``-32 * scale``), e.g. from
            a weighted search. Default round-to-nearest: a min-max grid (the minimum clipped at 0,
            as ggml's) for Q4_K/Q5_K, a signed-extreme one for Q6_K.
        sub_weight: Q4_K/Q5_K: how much an error in each sub-block's scale and in its minimum
            costs ([n, subs] each); ``d`` and ``dmin`` are then searched (:func:`super_scale`) instead
            of ``max / 63``.
    Returns:
        ``(d, dmin, sc, m, scale, minimum)``: the stored fields, and the grid per sub-block as fp32
        [n, subs] ``scale`` and ``minimum`` with ``w = q * scale + minimum`` (codes ``q`` from 0).
    """
    t = K_TYPES[kind]
    n = W.shape[0]
    Wg = W.float().reshape(n, t.subs, t.sub)
    if t.minimums:
        if sub_grid is None:
            low = Wg.amin(dim=-1).clamp(max=0)
            sub_scale = (Wg.amax(dim=-1) - low) / (2**t.bits - 1)
        else:
            sub_scale, low = (x.float() for x in sub_grid)
        if sub_weight is None:
            d, dmin = (sub_scale.amax(dim=1) / 63).to(torch.float16), (-low).amax(dim=1).div(63).to(torch.float16)
        else:
            d, dmin = super_scale(sub_scale, sub_weight[0], 63), super_scale(-low, sub_weight[1], 63)
        sc = torch.where(d[:, None] > 0, (sub_scale / d.float()[:, None].clamp(min=1e-30)).round(), 0).clamp(0, 63)
        m = torch.where(dmin[:, None] > 0, (-low / dmin.float()[:, None].clamp(min=1e-30)).round(), 0).clamp(0, 63)
        scale = d.float()[:, None] * sc
        return d, dmin, sc.long(), m.long(), scale, -(dmin.float()[:, None] * m)
    if sub_grid is None:
        extreme = Wg.gather(-1, Wg.abs().argmax(dim=-1, keepdim=True))[..., 0]
        sub_scale = extreme / -32
    else:
        sub_scale = sub_grid[0].float()
    d = (sub_scale.abs().amax(dim=1) / 127).to(torch.float16)
    sc = torch.where(d[:, None] > 0, (sub_scale / d.float()[:, None].clamp(min=1e-30)).round(), 0).clamp(-127, 127)
    scale = d.float()[:, None] * sc
    return d, None, sc.long(), None, scale, -32 * scale


@register_format("kquant")
@dataclass(frozen=True, eq=False)
class KQuant(Format):
    """A k-quant weight (see the module docstring).

    Attributes:
        shape: (out, in), ``in`` a multiple of 256.
        kind: ``q4_k``, ``q5_k`` or ``q6_k``.
        blocks: uint8 [out, in / 256 * block_bytes], each row's super-blocks as ggml stores them.
    """

    ARRAYS = ("blocks",)

    kind: str
    blocks: torch.Tensor

    @property
    def ktype(self) -> KType:
        return K_TYPES[self.kind]

    @classmethod
    def from_fields(cls, kind: str, shape: tuple[int, int], d, dmin, sc, m, q) -> "KQuant":
        """Pack the fields of every super-block (rows' super-blocks in order, ``q``: [out * in / 256, 256])."""
        out_features, in_features = shape
        blocks = pack(kind, d, dmin, sc, m, q).reshape(out_features, -1)
        return cls(shape=(out_features, in_features), kind=kind, blocks=blocks)

    @classmethod
    def from_dense(cls, W: torch.Tensor, *, kind: str, where: str = "weight") -> "KQuant":
        """Round-to-nearest on a :func:`fit_grid` grid."""
        check_shape(kind, tuple(W.shape), where)
        t = K_TYPES[kind]
        rows = W.float().reshape(-1, SUPER)
        d, dmin, sc, m, scale, minimum = fit_grid(kind, rows)
        q = grid_codes(rows.reshape(-1, t.subs, t.sub), scale[..., None], minimum[..., None], t.bits).long()
        if not bool(torch.isfinite(d.float()).all()) or (dmin is not None and not bool(torch.isfinite(dmin.float()).all())):
            raise SparsaError(f"{where}: weights beyond the fp16 range or non-finite; cannot store k-quant scales")
        return cls.from_fields(kind, tuple(W.shape), d, dmin, sc, m, q.reshape(-1, SUPER))

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out_features, in_features = self.shape
        dense = decode_blocks(self.kind, self.blocks.reshape(-1, self.ktype.block_bytes))
        return dense.reshape(out_features, in_features).to(dtype or torch.float32)

    def validate(self, where: str) -> None:
        super().validate(where)
        check(self.kind in K_TYPES, where, f"kind {self.kind!r} is not one of {', '.join(K_TYPES)}")
        check_shape(self.kind, self.shape, where)
        check_array(self.blocks, where, "blocks", (torch.uint8,),
                    (self.shape[0], self.shape[1] // SUPER * self.ktype.block_bytes))
        d, dmin = super_scales(self.kind, self.blocks.reshape(-1, self.ktype.block_bytes))  # codes need no check
        check(bool(torch.isfinite(d.float()).all()) and (dmin is None or bool(torch.isfinite(dmin.float()).all())),
              where, "a super-block scale (d or dmin) holds inf/nan")


def check_shape(kind: str, shape: tuple, where: str) -> None:
    """Raise unless ``kind`` is a k-quant and the rows are whole super-blocks."""
    if kind not in K_TYPES:
        raise SparsaError(f"{where}: k-quant {kind!r} is not one of {', '.join(K_TYPES)}")
    if len(shape) != 2 or shape[1] % SUPER:
        raise SparsaError(f"{where}: {kind} needs rows of a multiple of {SUPER} weights; this weight has "
                          f"{shape[1] if len(shape) == 2 else shape} (choose a 32-block grid: q4_0, q4_1, q5_0, "
                          "q5_1, q8_0)")
