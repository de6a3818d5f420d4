"""``SparseLinear``: an ``nn.Linear`` stand-in whose weight is a compressed format."""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sparsa.formats.base import Format
from sparsa.kernels import bind_linear, linear


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with W held in a format and multiplied by the dispatched kernel.

    The format's arrays are registered as buffers named after the arrays, so the module's
    state dict holds ``<module>.<array>`` entries and ``.to(device)`` moves them.

    Args:
        weight: a format holding W: [out, in].
        bias: [out] or None.
    """

    def __init__(self, weight: Format, bias: torch.Tensor | None = None):
        super().__init__()
        self.format_cls = type(weight)
        self.format_meta = weight.meta()
        self.out_features, self.in_features = weight.shape
        for name, array in weight.arrays().items():
            self.register_buffer(name, array)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.decoded: torch.Tensor | None = None  # set only inside ``decoded_weights``
        self.cache_decoded = False
        self._format: Format | None = None

    @classmethod
    def empty(cls, format_cls: type, meta: dict, shapes: dict, bias: torch.Tensor | None = None) -> "SparseLinear":
        """A module of ``format_cls`` with metadata ``meta`` whose arrays are ``meta``-device buffers
        (``shapes``: array name -> (shape, dtype)), to be loaded in place (transformers' loader)."""
        module = nn.Module.__new__(cls)
        nn.Module.__init__(module)
        module.format_cls, module.format_meta = format_cls, dict(meta)
        module.out_features, module.in_features = tuple(meta["shape"])
        for name, (shape, dtype) in shapes.items():
            module.register_buffer(name, torch.empty(shape, dtype=dtype, device="meta"))
        module.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        module.decoded, module.cache_decoded, module._format = None, False, None
        return module

    @property
    def weight_format(self) -> Format:
        """The format around this module's buffers; the same object while the buffers are the same
        tensors (kernels key their prepared layouts on it), rebuilt when any is replaced or moved."""
        buffers, fmt = self._buffers, self._format
        if fmt is None or any(getattr(fmt, name) is not buffers.get(name) for name in self.format_cls.ARRAYS):
            meta = {k: tuple(v) if isinstance(v, list) else v for k, v in self.format_meta.items()}
            fmt = self._format = self.format_cls(**meta, **{name: buffers.get(name) for name in self.format_cls.ARRAYS})
        return fmt

    def _apply(self, fn, recurse=True):
        """Move buffers with the module but keep their stored dtypes (``model.half()`` must not
        re-encode codes, scales or values; outputs follow the activation dtype anyway)."""
        originals = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in originals.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cache_decoded:
            return linear(x, self.weight_format, self.bias)
        if self.decoded is None or self.decoded.dtype != x.dtype or self.decoded.device != x.device:
            self.decoded = self.weight_format.to_dense(x.dtype)
        return F.linear(x, self.decoded, self.bias)

    def bound(self, example: torch.Tensor):
        """``x -> self(x)`` for many calls with activations like ``example`` (dtype, device): the
        kernel is chosen and prepared once (``bind_linear``); inside ``decoded_weights`` it is the
        module itself, the reference. Valid while the weight and the decoding mode stay as they are."""
        return self if self.cache_decoded else bind_linear(self.weight_format, self.bias, example)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format_cls.format_name}"


@contextmanager
def decoded_weights(model: nn.Module):
    """Inside the block, each ``SparseLinear`` decodes its weight once and reuses it (the reference
    product, for many forward passes when only the result matters: perplexity, calibration).
    The decoded copies are dropped on exit."""
    modules = [m for m in model.modules() if isinstance(m, SparseLinear)]
    for m in modules:
        m.cache_decoded = True
    try:
        yield model
    finally:
        for m in modules:
            m.cache_decoded, m.decoded = False, None
