"""widen_llama: a zero-padded Llama with k-quant-friendly widths computes the same logits."""

import torch

from sparsa.nn.widen import heads_per_group, padded, widen_llama


def test_widened_llama_has_multiple_widths_and_the_same_logits(tiny_llama):
    wide = widen_llama(tiny_llama, multiple=48)  # hidden 64 -> 96; 2 KV groups of 2 heads (16) -> of 3
    c = wide.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == (96, 144, 6, 2)
    for m in wide.modules():
        if isinstance(m, torch.nn.Linear) and m is not wide.lm_head:
            assert m.in_features % 48 == 0, m
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, tiny_llama(ids).logits, rtol=1e-5, atol=1e-5)
    assert wide.lm_head.weight.data_ptr() == wide.model.embed_tokens.weight.data_ptr()


def test_widening_counts():
    assert padded(576, 256) == 768 and padded(1536, 256) == 1536
    assert heads_per_group(3, 3, 64, 256) == 4  # SmolLM2: 9 heads -> 12, width 768
