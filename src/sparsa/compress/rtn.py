"""RTN: round-to-nearest group quantization (data-free baseline of every quantization paper)."""

import torch

from sparsa.compress.config import RTNConfig
from sparsa.compress.registry import register_method
from sparsa.formats.kquant import KQuant
from sparsa.formats.quant import Quant


@register_method(RTNConfig)
def rtn(W: torch.Tensor, config: RTNConfig, *, where: str) -> Quant | KQuant:
    """Quantize ``W: [out, in]`` to ``config.bits`` with min-max (or symmetric) groups of ``config.group_size``,
    or on a k-quant grid (``config.grid`` ``q4_k``, ``q5_k``, ``q6_k``)."""
    if config.kquant:
        return KQuant.from_dense(W, kind=config.kquant, where=where)
    return Quant.from_dense(W, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                            absmax=config.absmax, where=where)
