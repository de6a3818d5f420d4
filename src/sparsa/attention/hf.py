"""AnchorAttention inside Hugging Face models: ``attn_implementation="sparsa_anchor"``.

:func:`use_anchor_attention_` registers the implementation with transformers' attention
interface, hands each attention module its :class:`AnchorConfig` and switches the model to it.
Prefill (as many queries as keys, no padding mask) runs AnchorAttention; decode steps, chunked
prefill against a cache, and padded batches run PyTorch SDPA, dense.
"""

from torch import nn

from sparsa.attention.anchor import anchor_attention
from sparsa.attention.config import AnchorConfig
from sparsa.errors import SparsaError

ANCHOR = "sparsa_anchor"


def anchor_forward(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                   **kwargs):
    """The transformers attention-interface function.

    Args:
        query: [B, Hq, N, D]; key, value: [B, Hkv, S, D] (S = N in a prefill).
    Returns:
        ([B, N, Hq, D], None) as transformers expects.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    config = getattr(module, "sparsa_anchor", None)
    n = query.shape[2]
    if config is None or attention_mask is not None or n == 1 or key.shape[2] != n or (module.training and dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    result = anchor_attention(query, key, value, config, scale=scaling)
    return result.o.transpose(1, 2).contiguous(), None


def register(name: str, forward) -> None:
    """Make ``name`` a transformers attention implementation running ``forward``, with SDPA's
    masks (None for a plain causal prefill, a real mask when there is padding); idempotent.
    Without the mask registration transformers passes no mask at all, padding included."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sdpa_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a Llama-style model (those with ``layer_idx`` and ``q_proj``)."""
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]


def use_anchor_attention_(model: nn.Module, config: AnchorConfig) -> int:
    """Run the prefill attention of every layer of ``model`` with AnchorAttention, in place.

    Returns:
        The number of attention modules switched.
    """
    modules = attention_modules(model)
    if not modules:
        raise SparsaError(f"{type(model).__name__}: no Llama-style attention modules (q_proj, layer_idx) "
                          "to run AnchorAttention in")
    register(ANCHOR, anchor_forward)
    for m in modules:
        m.sparsa_anchor = config
    model.set_attn_implementation(ANCHOR)
    return len(modules)
