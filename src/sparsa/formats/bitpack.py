"""Dense bit packing of unsigned codes (1 to 32 bits each) into a uint8 stream.

Layout: codes are laid end to end, least significant bit first, in the order given
(row-major for matrices); the last byte is zero-padded. ``n`` codes of ``bits`` bits take
exactly ``ceil(n * bits / 8)`` bytes.
"""

import torch

MAX_PACK_BITS = 32

_BYTE_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    return (n * bits + 7) // 8


def index_bits(n: int) -> int:
    """Bits of the narrowest code holding every integer in [0, n): ceil(log2 n), at least 1."""
    return max(1, (n - 1).bit_length())


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes into bytes.

    Args:
        codes: [n] or any shape, integer, every value in [0, 2**bits).
        bits: 1..32 bits per code.
    Returns:
        [ceil(n * bits / 8)] uint8.
    """
    if bits == 8:
        return codes.reshape(-1).to(torch.uint8).clone()
    flat = codes.reshape(-1).to(torch.uint8 if bits < 8 else torch.int64)
    shifts = torch.arange(bits, dtype=flat.dtype, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).to(torch.uint8).reshape(-1)  # [n * bits] 0/1
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    octets = stream.view(-1, 8) << _BYTE_SHIFTS.to(flat.device)  # [nbytes, 8], disjoint bits
    return octets.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: [ceil(n * bits / 8)] uint8 -> [n] codes, uint8 for up to
    8 bits, int64 for 9..32."""
    if bits == 8:
        return packed[:n].clone()
    stream = ((packed[:, None] >> _BYTE_SHIFTS.to(packed.device)) & 1).reshape(-1)[: n * bits]
    dtype = torch.uint8 if bits < 8 else torch.int64
    shifts = torch.arange(bits, dtype=dtype, device=packed.device)
    return (stream.view(n, bits).to(dtype) << shifts).sum(dim=1, dtype=dtype)
