"""all-MiniLM-L6-v2 from its package: loads offline, embeds to unit vectors that rank meaning."""

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.nn.encoders import MINILM, embed, load_encoder


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(MINILM)


def test_embed_minilm_unit_vectors_rank_paraphrase_above_unrelated(minilm):
    sentences = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."]
    e = embed(minilm, sentences, batch_size=2)
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > sim[0, 2]


def test_embed_minilm_padding_and_batching_do_not_change_embeddings(minilm):
    sentences = ["short", "a much longer sentence that needs padding in a batch with a short one"]
    together = embed(minilm, sentences, batch_size=2)
    alone = torch.cat([embed(minilm, [s]) for s in sentences])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_embed_no_sentences_gives_empty_matrix(minilm):
    assert embed(minilm, []).shape == (0, 384)


def test_load_encoder_directory_without_config_raises(tmp_path):
    with pytest.raises(SparsaError, match="not all-minilm-l6-v2 nor a Hugging Face model directory"):
        load_encoder(str(tmp_path))
