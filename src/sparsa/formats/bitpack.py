"""Dense bit packing of small unsigned codes into a uint8 stream.

Layout: codes are laid end to end, least significant bit first, in the order given
(row-major for matrices); the last byte is zero-padded. ``n`` codes of ``bits`` bits take
exactly ``ceil(n * bits / 8)`` bytes.
"""

import torch

_BYTE_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    return (n * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes into bytes.

    Args:
        codes: [n] or any shape, integer, every value in [0, 2**bits).
        bits: 1..8 bits per code.
    Returns:
        [ceil(n * bits / 8)] uint8.
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)  # [n * bits] 0/1
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    octets = stream.view(-1, 8) << _BYTE_SHIFTS.to(flat.device)  # [nbytes, 8], disjoint bits
    return octets.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: [ceil(n * bits / 8)] uint8 -> [n] uint8 codes."""
    if bits == 8:
        return packed[:n].clone()
    stream = ((packed[:, None] >> _BYTE_SHIFTS.to(packed.device)) & 1).reshape(-1)[: n * bits]
    shifts = torch.arange(bits, dtype=torch.uint8, device=packed.device)
    return (stream.view(n, bits) << shifts).sum(dim=1, dtype=torch.uint8)
