"""Capture every layer's queries, keys and values (after rotary embedding) from one forward pass."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sparsa.attention.hf import attention_modules, register
from sparsa.errors import SparsaError

CAPTURE = "sparsa_capture"


@dataclass
class LayerQKV:
    """``q`` [B, Hq, N, D], ``k``/``v`` [B, Hkv, N, D] as the layer's attention saw them; ``scale``
    the score scale it used."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float


@contextmanager
def captured_qkv(model: nn.Module):
    """Within the block, forward passes of ``model`` record each layer's last attention inputs
    into the yielded dict ``{layer index: LayerQKV}``; the attention itself stays SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store: dict[int, LayerQKV] = {}

    def capture(module, query, key, value, attention_mask, scaling=None, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        store[module.layer_idx] = LayerQKV(query.detach(), key.detach(), value.detach(), float(scale))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    if not attention_modules(model):
        raise SparsaError(f"{type(model).__name__}: no Llama-style attention modules to capture")
    register(CAPTURE, capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE)
    try:
        yield store
    finally:
        model.set_attn_implementation(previous)
