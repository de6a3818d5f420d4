"""ggml's 32-weight block types as views of :class:`~sparsa.formats.quant.Quant`, byte for byte.

A ``Quant`` with groups of 32 and fp16 scales already holds what ggml's legacy block types hold;
only the byte layout differs. Per block of 32 weights of a row (``d``, ``m``: fp16; ``q``: codes):

=======  ===========================  =========  ===============================================
type     Quant                        bytes      layout
=======  ===========================  =========  ===============================================
Q4_0     bits 4, symmetric            18         ``d``, 16 bytes: weights 0..15 in the low
                                                 nibbles, 16..31 in the high ones; ``d * (q - 8)``
Q4_1     bits 4, minimum              20         ``d``, ``m``, nibbles as Q4_0; ``d * q + m``
Q5_0     bits 5, symmetric            22         ``d``, 4 bytes of bit 4 of each code (weight j
                                                 at bit j, little-endian), nibbles; ``d*(q-16)``
Q5_1     bits 5, minimum              24         ``d``, ``m``, high bits, nibbles; ``d * q + m``
Q8_0     bits 8, symmetric            34         ``d``, 32 int8 ``q - 128``; ``d * (q - 128)``
=======  ===========================  =========  ===============================================

Decoding either side gives the same fp32 values: ``q * d + (-2**(b-1) * d)`` and ggml's
``d * (q - 2**(b-1))`` are both exact in fp32 (an fp16 times a small integer); only a code at the
centre of a negative ``d`` decodes to ``+0`` here and ``-0`` in ggml. The ``gguf`` package's
dequantizers are the reference the tests hold this module to.
"""

from dataclasses import dataclass

import numpy as np
import torch

from sparsa.errors import SparsaError
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.quant import Quant

BLOCK = 32


@dataclass(frozen=True)
class BlockType:
    """One ggml block type: its name as ``gguf.GGMLQuantizationType`` spells it and its Quant grid."""

    name: str
    bits: int
    symmetric: bool

    @property
    def block_bytes(self) -> int:
        return 2 + (0 if self.symmetric else 2) + BLOCK * self.bits // 8


BLOCK_TYPES = {t.name.lower(): t for t in (BlockType("Q4_0", 4, True), BlockType("Q4_1", 4, False),
                                           BlockType("Q5_0", 5, True), BlockType("Q5_1", 5, False),
                                           BlockType("Q8_0", 8, True))}


def block_type_of(fmt: Quant, where: str) -> BlockType:
    """The ggml type storing ``fmt`` exactly; SparsaError naming ``where`` when none does."""
    if fmt.group_size == BLOCK and fmt.shape[1] % BLOCK == 0:
        for t in BLOCK_TYPES.values():
            if (t.bits, t.symmetric) == (fmt.bits, fmt.symmetric):
                return t
    grids = ", ".join(f"{k} (bits {t.bits}, {'symmetric' if t.symmetric else 'with minimum'})"
                      for k, t in BLOCK_TYPES.items())
    raise SparsaError(f"{where}: Quant bits {fmt.bits}, group size {fmt.group_size}, "
                      f"{'symmetric' if fmt.symmetric else 'with minimum'}, {fmt.shape[1]} columns has no ggml "
                      f"block type; ggml's take groups of {BLOCK} over rows of a multiple of {BLOCK}: {grids}")


def _fp16_bytes(x: torch.Tensor) -> np.ndarray:
    """[out, G] fp16 -> [out, G, 2] uint8 (little-endian, as ggml stores it)."""
    return x.contiguous().numpy().view(np.uint8).reshape(*x.shape, 2)


def to_blocks(fmt: Quant, where: str = "weight") -> np.ndarray:
    """The ggml bytes of ``fmt``: uint8 [out, in / 32 * block_bytes], rows as ggml lays them out."""
    t = block_type_of(fmt, where)
    out_features, in_features = fmt.shape
    q = fmt.unpacked_codes().reshape(out_features, in_features // BLOCK, BLOCK).numpy()
    parts = [_fp16_bytes(fmt.scale)]
    if not t.symmetric:
        parts.append(_fp16_bytes(fmt.minimum))
    if t.bits == 8:
        parts.append((q.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if t.bits == 5:
            parts.append(np.packbits(q >> 4, axis=-1, bitorder="little"))
        low = q & 0x0F
        parts.append(low[..., :BLOCK // 2] | (low[..., BLOCK // 2:] << 4))
    return np.concatenate(parts, axis=-1).reshape(out_features, -1)


def from_blocks(type_name: str, data: np.ndarray, shape: tuple[int, int], where: str = "weight") -> Quant:
    """The ``Quant`` whose :func:`to_blocks` is ``data`` (uint8 [out, in / 32 * block_bytes]) of ggml type
    ``type_name`` (``q4_0`` ... ``q8_0``).

    Raises:
        SparsaError: an unknown type, a shape that is not whole blocks, or bytes of the wrong size.
    """
    t = BLOCK_TYPES.get(type_name.lower())
    out_features, in_features = shape
    if t is None or in_features % BLOCK:
        raise SparsaError(f"{where}: ggml type {type_name} over {in_features} columns: need one of "
                          f"{', '.join(BLOCK_TYPES)} and a multiple of {BLOCK}")
    blocks = np.ascontiguousarray(data, dtype=np.uint8)
    if blocks.size != out_features * in_features // BLOCK * t.block_bytes:
        raise SparsaError(f"{where}: {blocks.size} bytes; {type_name} of {out_features}x{in_features} takes "
                          f"{out_features * in_features // BLOCK * t.block_bytes}")
    blocks = blocks.reshape(out_features, in_features // BLOCK, t.block_bytes)
    scale = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0])
    at = 2 if t.symmetric else 4
    minimum = None if t.symmetric else torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0])
    if t.bits == 8:
        q = blocks[..., at:].view(np.int8).astype(np.int16) + 128
    else:
        high = 0
        if t.bits == 5:
            high = np.unpackbits(blocks[..., at:at + 4], axis=-1, bitorder="little").astype(np.int16) << 4
            at += 4
        nibbles = blocks[..., at:]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.int16) + high
    codes = torch.from_numpy(q.astype(np.uint8).reshape(out_features, in_features))
    fmt = Quant(shape=(out_features, in_features), bits=t.bits, group_size=BLOCK, codes=pack_bits(codes, t.bits),
                scale=scale.contiguous(), minimum=None if minimum is None else minimum.contiguous(),
                symmetric=t.symmetric)
    fmt.validate(where)
    return fmt
