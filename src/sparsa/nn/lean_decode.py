"""A lean Llama decode loop after gpt-fast: a static KV cache and no per-token framework work.

:class:`LeanLlama` wraps a Hugging Face ``LlamaForCausalLM`` and reuses its modules (embedding,
norms, rotary embedding, MLPs and every projection, dense ``nn.Linear`` or ``SparseLinear``),
so a compressed model decodes through the dispatched kernels; only the attention's cache
handling and the loop are ours. Every projection is bound once per decoder (the kernel and
its layout chosen up front: :meth:`SparseLinear.bound`), and the Llama MLP is spelled out
over the bound projections. Per token it runs the layers' own modules plus one
``scaled_dot_product_attention`` per layer over the filled part of the cache; a single fp32
token on the CPU takes one compiled call for the whole step instead, every layer and the head
(:func:`sparsa.kernels.cpu.llama_step.compiled_step`, any mix of formats with a compiled
kernel and dense fp32), or, where some projection has none, one compiled call per layer's
attention (rotary, cache append and attention:
:func:`sparsa.kernels.cpu.decode_attention.rotary_attention_step`); the torch path
(``fused=False``) checks both. Norms run as one ``F.rms_norm`` each.
"""

import time
from collections import Counter
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sparsa.errors import SparsaError
from sparsa.kernels import record_kernel, step_kernel
from sparsa.kernels.cpu.decode_attention import rotary_attention_step
from sparsa.kernels.cpu.dense import dense_linear, dense_step
from sparsa.kernels.cpu.llama_step import Schedule, StepBuffers, compiled_step, kernel_table
from sparsa.nn.sparse_linear import SparseLinear


def bound_linear(module: nn.Module, example: torch.Tensor):
    """``x -> module(x)`` without the per-call module machinery: a ``SparseLinear``'s bound kernel
    or, for a dense ``nn.Linear``, :func:`~sparsa.kernels.cpu.dense.dense_linear` (oneDNN for fp32
    on the CPU) or ``F.linear`` on its weight."""
    if isinstance(module, SparseLinear):
        return module.bound(example)
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        if weight.dtype != example.dtype and weight.dtype.is_floating_point:  # bf16 weights, fp32 activations
            return lambda x: F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)
        if example.device.type == "cpu" and example.dtype == torch.float32:
            return lambda x: dense_linear(x, weight, bias)  # F.linear for weight subclasses (torchao)
        return lambda x: F.linear(x, weight, bias)  # positional: weight subclasses (torchao) dispatch on them
    return module


def step_product(module: nn.Module, example: torch.Tensor, tokens: int) -> tuple | None:
    """``(RowKernel, operand)`` of a bias-free projection for the compiled step: a
    ``SparseLinear``'s dispatched kernel for ``tokens`` rows (not in reference mode), or a dense fp32 ``nn.Linear``'s
    :func:`~sparsa.kernels.cpu.dense.dense_step`; None when it has none."""
    if getattr(module, "bias", None) is not None:
        return None
    if isinstance(module, SparseLinear):
        return None if module.cache_decoded else step_kernel(module.weight_format, example, tokens)
    if type(module) is nn.Linear:
        return dense_step(module.weight)
    return None


def kernel_label(module: nn.Module) -> str:
    """The format name a product is recorded under: the weight's format, or ``dense``."""
    return module.weight_format.format_name if isinstance(module, SparseLinear) else "dense"


def compile_layers(lean: "LeanLlama", body: nn.Module) -> bool:
    """Set ``lean`` up for :func:`sparsa.kernels.cpu.llama_step.compiled_step` when every projection
    and the head have a compiled kernel (:func:`step_product`), the norms share one epsilon and
    the MLP is SiLU-gated; say whether it was."""
    modules = [m for layer in body.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] + [lean.lm_head]
    norms = [n for layer in body.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)] + [body.norm]
    if len({n.variance_epsilon for n in norms}) != 1 or getattr(lean.model.config, "hidden_act", None) != "silu":
        return False
    example = torch.empty(0, dtype=torch.float32)
    products = [step_product(m, example, lean.batch) for m in modules]
    if any(p is None for p in products):
        return False
    lean.table = kernel_table([(*p, m.out_features) for p, m in zip(products, modules)], lean.batch)
    lean.schedule = Schedule.of(lean.table.units, numba.get_num_threads()).as_tuple()
    lean.step = compiled_step(lean.table.kernels)
    lean.norm_in = torch.stack([l.input_layernorm.weight.detach().float() for l in body.layers]).numpy()
    lean.norm_post = torch.stack([l.post_attention_layernorm.weight.detach().float() for l in body.layers]).numpy()
    lean.norm_final = body.norm.weight.detach().float().numpy()
    lean.eps = np.float32(body.norm.variance_epsilon)
    mlp = body.layers[0].mlp
    lean.buffers = StepBuffers.allocate(lean.batch, lean.norm_final.shape[0], lean.heads * lean.head_dim,
                                        lean.kv_heads * lean.head_dim, mlp.gate_proj.out_features).as_tuple()
    for label, count in Counter(kernel_label(m) for m in modules).items():
        record_kernel(label, f"{compiled_step.__module__}.compiled_step", count)
    return True


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama RMSNorm module's result in one call (fp32 statistics, as the module computes them)."""
    return F.rms_norm(x.float(), x.shape[-1:], None, norm.variance_epsilon).to(x.dtype) * norm.weight


class LeanLlama:
    """Static-cache forward over a Llama model's own modules.

    Args:
        model: a ``LlamaForCausalLM`` (any of its linears may be ``SparseLinear``), in eval mode.
        batch: sequences decoded together.
        max_len: prompt + generated tokens the cache holds.
        dtype: cache and activation dtype (default: the embedding's; fp32 for a bf16 model on the CPU
            when ``fused``, whose compiled step widens bf16 weights in registers).
        fused: take the compiled single-token attention step where it applies (fp32 on the CPU).
    """

    def __init__(self, model: nn.Module, batch: int, max_len: int, dtype: torch.dtype | None = None,
                 fused: bool = True):
        if getattr(model.config, "model_type", None) != "llama":
            raise SparsaError(f"the lean decoder runs Llama models, got model_type={model.config.model_type!r}")
        cfg, body = model.config, model.model
        self.model, self.body, self.lm_head = model, body, model.lm_head
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        device = body.embed_tokens.weight.device
        self.dtype = dtype or body.embed_tokens.weight.dtype
        if dtype is None and fused and device.type == "cpu" and self.dtype == torch.bfloat16:
            self.dtype = torch.float32
        shape = (len(body.layers), batch, self.kv_heads, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=device)
        self.batch, self.max_len = batch, max_len
        self.fused = fused and self.dtype == torch.float32 and device.type == "cpu"
        self.k_layers = [c.numpy() for c in self.k_cache] if self.fused else []  # per-layer views, made once
        self.k_layers_all, self.v_layers_all = (self.k_cache.numpy(), self.v_cache.numpy()) if self.fused else (None, None)
        self.v_layers = [c.numpy() for c in self.v_cache] if self.fused else []
        example = torch.empty(0, dtype=self.dtype, device=device)
        self.projections = [tuple(bound_linear(m, example) for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)) for layer in body.layers]
        self.head = bound_linear(model.lm_head, example)
        self.compiled_layers = self.fused and compile_layers(self, body)

    def step_bytes(self) -> int | None:
        """Bytes of weights one compiled decode step reads (every array of its kernel table once, and
        the norms), or None without a compiled step. The cache it reads comes on top."""
        if not self.compiled_layers:
            return None
        arrays = {(a.ctypes.data, a.nbytes) for kind in self.table.entries for operand, _ in kind for a in operand
                  if isinstance(a, np.ndarray)}
        return sum(n for _, n in arrays) + self.norm_in.nbytes + self.norm_post.nbytes + self.norm_final.nbytes

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start: int, last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] for ``tokens`` [B, T] at positions ``start .. start + T``; fills the cache.
        ``last_only``: logits [B, 1, vocab] of the last position alone (the head, a fifth of a small
        model's weights, runs once instead of T times: what generation needs after a prompt)."""
        B, T = tokens.shape
        end = start + T
        if B != self.batch or end > self.max_len:
            raise SparsaError(f"lean decoder built for batch {self.batch} and {self.max_len} positions, "
                              f"asked for batch {B} up to position {end}")
        x = self.body.embed_tokens(tokens).to(self.dtype)
        positions = torch.arange(start, end, device=tokens.device)[None]
        cos, sin = self.body.rotary_emb(x, positions)
        # prefill: token i sees keys 0 .. start + i; one new token sees the whole filled cache
        mask = None if T == 1 else (torch.arange(end, device=x.device)[None] <= positions[0, :, None])
        step = self.fused and T == 1
        if step:
            cos1, sin1 = cos.reshape(-1).numpy(), sin.reshape(-1).numpy()  # [hd]: one position
        if step and self.compiled_layers:
            logits = np.empty((B, self.lm_head.out_features), np.float32)
            t = self.table
            self.step(x.reshape(B, -1).contiguous().numpy(), t.entries, t.kinds, t.index, t.prepare_kinds,
                      self.schedule, self.norm_in, self.norm_post, self.norm_final, self.eps, self.k_layers_all,
                      self.v_layers_all, cos1, sin1, start, self.buffers, logits)
            return torch.from_numpy(logits).view(B, 1, -1)
        for i, layer in enumerate(self.body.layers):
            q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj = self.projections[i]
            h = rms_norm(layer.input_layernorm, x)
            q, k, v = q_proj(h), k_proj(h), v_proj(h)
            if step:
                o = torch.empty(B, self.heads * self.head_dim)
                rotary_attention_step(q.reshape(B, -1).numpy(), k.reshape(B, -1).numpy(), v.reshape(B, -1).numpy(),
                                      cos1, sin1, self.k_layers[i], self.v_layers[i], start, o.numpy())
                o = o.view(B, 1, -1)
            else:
                o = self.attend(i, q, k, v, cos, sin, start, mask)
            x = x + o_proj(o)
            h = rms_norm(layer.post_attention_layernorm, x)
            x = x + down_proj(layer.mlp.act_fn(gate_proj(h)) * up_proj(h))  # the Llama MLP
        return self.head(rms_norm(self.body.norm, x[:, -1:] if last_only else x))

    def attend(self, i: int, q, k, v, cos, sin, start: int, mask) -> torch.Tensor:
        """Torch path of layer ``i``'s attention: rotary, cache append, SDPA -> [B, T, heads * hd]."""
        B, T, _ = q.shape
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        end = start + T
        self.k_cache[i, :, :, start:end] = k
        self.v_cache[i, :, :, start:end] = v
        o = F.scaled_dot_product_attention(q, self.k_cache[i, :, :, :end], self.v_cache[i, :, :, :end],
                                           attn_mask=mask, enable_gqa=self.heads != self.kv_heads)
        return o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)


@dataclass
class Decoded:
    """Greedy decode result: tokens [B, new], the top-2 logit gap at each step [B, new], timings (s)."""

    tokens: torch.Tensor
    top2_gap: torch.Tensor
    prefill_seconds: float
    decode_seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over the decode steps (all sequences; prefill excluded)."""
        steps = self.tokens.shape[1] - 1
        return self.tokens.shape[0] * steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int, dtype: torch.dtype | None = None,
                  fused: bool = True) -> Decoded:
    """Greedy-decode ``new_tokens`` after ``prompt`` [B, T0] (token ids) with a :class:`LeanLlama`.

    The first token comes from the prefill; each later one from a single-token step
    (``fused``: see :class:`LeanLlama`).
    """
    if new_tokens < 1:
        raise SparsaError(f"new_tokens={new_tokens} must be at least 1")
    lean = LeanLlama(model, prompt.shape[0], prompt.shape[1] + new_tokens, dtype, fused)
    tokens, gaps = [], []

    def pick(logits):  # argmax and the gap to the runner-up (two max passes: topk is 4x slower here)
        last = logits[:, -1].float()
        best, index = last.max(dim=-1)
        runner_up = last.scatter(-1, index[:, None], float("-inf")).amax(dim=-1)
        gaps.append(best - runner_up)
        tokens.append(index)
        return index[:, None]

    start = time.perf_counter()
    nxt = pick(lean.forward(prompt, 0, last_only=True))
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(1, new_tokens):
        nxt = pick(lean.forward(nxt, prompt.shape[1] + step - 1))
    return Decoded(torch.stack(tokens, 1), torch.stack(gaps, 1), prefill, time.perf_counter() - start)
