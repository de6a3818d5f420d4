"""Recovery of a sentence encoder on a tiny BERT: block-sparse linears (pooler kept), padding ignored."""

import pytest
import torch

from conftest import word_sentences
from sparsa.compress.recover import RecoverConfig
from sparsa.compress.recover_encoder import recover_encoder_, sentence_ids
from sparsa.errors import SparsaError
from sparsa.formats import BlockSparse
from sparsa.nn.encoders import MeanPooled
from sparsa.nn.sparse_linear import SparseLinear

CONFIG = RecoverConfig(sparsity=0.75, block=(1, 4), steps=6, update_every=2, lr=1e-3, batch_size=4)


def test_recover_encoder_replaces_every_linear_but_pooler(tiny_encoder):
    summary = recover_encoder_(tiny_encoder, CONFIG, sentences=word_sentences(32), progress=False)
    assert summary.layers == 12 and summary.kept_blocks == round(0.25 * summary.total_blocks)
    model = tiny_encoder.model
    assert isinstance(model.pooler.dense, torch.nn.Linear)
    assert all(isinstance(m, SparseLinear) and m.format_cls is BlockSparse
               for n, m in model.named_modules() if n.endswith(("query", "key", "value", "dense")) and "pooler" not in n)


def test_sentence_ids_pad_with_pad_id_and_mean_pool_ignores_padding(tiny_encoder):
    ids = sentence_ids(tiny_encoder, ["w1 w2 w3 w4 w5 w6 .", "w7 w8 w9 w10 w11 w12 w13 w14 w15 ."], 64)
    assert ids[0, -1] == tiny_encoder.tokenizer.pad_token_id and ids[:, 0].tolist() == [2, 2]
    pooled = MeanPooled(tiny_encoder.model)
    with torch.no_grad():
        short = pooled(ids[:1, :9], torch.ones(1, 9, dtype=torch.long))
        padded = pooled(ids[:1], (ids[:1] != 0).long())
    torch.testing.assert_close(short, padded, rtol=1e-5, atol=1e-6)


def test_recover_encoder_tokenizer_without_pad_raises(tiny_encoder):
    tiny_encoder.tokenizer.pad_token = None
    with pytest.raises(SparsaError, match="tiny-bert: the tokenizer has no pad token"):
        recover_encoder_(tiny_encoder, CONFIG, sentences=word_sentences(4), progress=False)
