"""A Llama widened with zeros to row lengths that k-quants take, computing the same function.

ggml's k-quants (Q4_K, Q5_K, Q6_K) quantize rows in super-blocks of 256, so a model whose widths
are not multiples of 256 (SmolLM2-135M: hidden 576) cannot be stored in them. :func:`widen_llama`
pads the hidden size, the attention width (extra all-zero query heads in each KV group) and the
MLP width with zeros up to a multiple, and rescales every RMSNorm so the result is the same model:

* hidden ``H -> H'``: embeddings, every residual writer's rows and every reader's columns are
  zero-padded, so the padded channels of the residual stream stay 0;
* RMSNorm over ``H'`` channels of which ``H`` are nonzero divides by ``sqrt(H/H' * (mean + eps'))``;
  with ``eps' = eps * H / H'`` and weights scaled by ``sqrt(H / H')`` it equals the original;
* query heads ``g -> g'`` per KV group: the new heads' ``q_proj`` rows and ``o_proj`` columns are
  0, so their (uniform) attention output is multiplied by zero;
* MLP ``I -> I'``: the new units' gate and up rows and down columns are 0 (``silu(0) * 0 = 0``).
"""

import math

import torch
from torch import nn


def padded(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def heads_per_group(groups: int, group: int, head_dim: int, multiple: int) -> int:
    """The fewest query heads per KV group, at least ``group``, whose total width is a multiple."""
    g = group
    while (groups * g * head_dim) % multiple:
        g += 1
    return g


def place(source: torch.Tensor, shape: tuple[int, int], rows: torch.Tensor | None = None,
          cols: torch.Tensor | None = None) -> torch.Tensor:
    """A zero [shape] tensor with ``source`` at rows ``rows`` and columns ``cols`` (default: the first ones)."""
    out = source.new_zeros(shape)
    rows = torch.arange(source.shape[0]) if rows is None else rows
    cols = torch.arange(source.shape[1]) if cols is None else cols
    out[rows[:, None], cols[None, :]] = source
    return out


@torch.no_grad()
def widen_llama(model: nn.Module, multiple: int = 256) -> nn.Module:
    """A new ``LlamaForCausalLM`` computing ``model``'s function (to float rounding) whose hidden
    size, query width (heads x head_dim) and MLP width are multiples of ``multiple``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hidden, inter, heads, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    group = heads // kv
    hidden2, inter2 = padded(hidden, multiple), padded(inter, multiple)
    group2 = heads_per_group(kv, group, head_dim, multiple)
    # query head h (group h // group, index h % group) moves to slot (h // group) * group2 + h % group
    slots = torch.tensor([(h // group) * group2 + h % group for h in range(heads)])
    q_rows = (slots[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    config = LlamaConfig(**{**c.to_dict(), "hidden_size": hidden2, "intermediate_size": inter2,
                            "num_attention_heads": kv * group2, "head_dim": head_dim,
                            "rms_norm_eps": c.rms_norm_eps * hidden / hidden2})
    wide = LlamaForCausalLM(config).to(model.dtype).eval()
    norm_scale = math.sqrt(hidden / hidden2)
    old, new = model.state_dict(), wide.state_dict()
    for name, target in new.items():
        w = old[name]
        if name.endswith("norm.weight"):
            value = torch.cat([w * norm_scale, w.new_zeros(hidden2 - hidden)])
        elif name.endswith(("embed_tokens.weight", "lm_head.weight", "k_proj.weight", "v_proj.weight",
                            "gate_proj.weight", "up_proj.weight", "down_proj.weight")):
            value = place(w, tuple(target.shape))
        elif name.endswith("q_proj.weight"):
            value = place(w, tuple(target.shape), rows=q_rows)
        elif name.endswith("o_proj.weight"):
            value = place(w, tuple(target.shape), cols=q_rows)
        else:
            raise ValueError(f"{name}: widen_llama does not know how to widen this tensor (shape {tuple(w.shape)})")
        target.copy_(value)
    wide.tie_weights()
    return wide
