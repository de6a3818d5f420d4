"""``attn_implementation="sparsa_anchor"`` in a Hugging Face Llama: prefill sparse, decode dense."""

import math

import pytest
import torch

from sparsa.attention.capture import captured_qkv
from sparsa.attention.config import AnchorConfig
from sparsa.attention.hf import ANCHOR, use_anchor_attention_
from sparsa.errors import SparsaError

SMALL = dict(block_m=4, step=1, init=2, window=0, backend="torch")


def ids(n=40, seed=0):
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_anchor_theta_inf_logits_equal_sdpa(tiny_llama):
    x = ids()
    ref = tiny_llama(x).logits
    assert use_anchor_attention_(tiny_llama, AnchorConfig(theta=math.inf, **SMALL)) == 2
    assert tiny_llama.config._attn_implementation == ANCHOR
    torch.testing.assert_close(tiny_llama(x).logits, ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_anchor_theta_minus_inf_changes_prefill_logits(tiny_llama):
    x = ids()
    ref = tiny_llama(x).logits
    use_anchor_attention_(tiny_llama, AnchorConfig(theta=-math.inf, **SMALL))
    out = tiny_llama(x).logits
    torch.testing.assert_close(out[:, :4], ref[:, :4], rtol=1e-5, atol=1e-5)  # group 0 sees all its keys anyway
    assert (out[:, 4:] - ref[:, 4:]).abs().max() > 1e-3


@torch.no_grad()
def test_anchor_decode_steps_run_dense_sdpa(tiny_llama):
    x = ids(30)
    dense = tiny_llama.generate(x, max_new_tokens=5, do_sample=False)
    use_anchor_attention_(tiny_llama, AnchorConfig(theta=math.inf, **SMALL))
    assert torch.equal(tiny_llama.generate(x, max_new_tokens=5, do_sample=False), dense)


@torch.no_grad()
def test_anchor_padded_batch_falls_back_to_dense(tiny_llama):
    x = torch.cat([ids(20, 1), ids(20, 2)])
    mask = torch.ones_like(x)
    mask[1, :5] = 0  # left padding
    ref = tiny_llama(x, attention_mask=mask).logits
    use_anchor_attention_(tiny_llama, AnchorConfig(theta=-math.inf, **SMALL))
    torch.testing.assert_close(tiny_llama(x, attention_mask=mask).logits, ref, rtol=1e-5, atol=1e-5)


def test_use_anchor_attention_without_llama_attention_raises():
    with pytest.raises(SparsaError, match="no Llama-style attention"):
        use_anchor_attention_(torch.nn.Linear(2, 2), AnchorConfig())


@torch.no_grad()
def test_captured_qkv_records_every_layer_and_restores_sdpa(tiny_llama):
    before = tiny_llama.config._attn_implementation
    x = ids(24)
    ref = tiny_llama(x).logits
    with captured_qkv(tiny_llama) as store:
        out = tiny_llama(x).logits
    assert sorted(store) == [0, 1] and tiny_llama.config._attn_implementation == before
    torch.testing.assert_close(out, ref)
    layer = store[0]
    assert layer.q.shape == (1, 4, 24, 16) and layer.k.shape == (1, 2, 24, 16) and layer.v.shape == layer.k.shape
    assert math.isclose(layer.scale, 16 ** -0.5)
