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


def recovered_tiny(encoder):
    from conftest import word_sentences
    from sparsa.compress.recover import RecoverConfig
    from sparsa.compress.recover_encoder import recover_encoder_

    config = RecoverConfig(sparsity=0.5, block=(1, 4), steps=3, update_every=1, lr=1e-3, batch_size=4)
    recover_encoder_(encoder, config, sentences=word_sentences(16), progress=False)
    return encoder


def test_load_encoder_recovered_checkpoint_embeds_identically(tiny_encoder, tmp_path):
    from conftest import word_sentences
    from sparsa.nn.checkpoint import save_checkpoint
    from sparsa.nn.sparse_linear import SparseLinear

    encoder = recovered_tiny(tiny_encoder)
    manifest = save_checkpoint(encoder.model, encoder.tokenizer, tmp_path / "ck", method={"method": "magnitude"})
    loaded = load_encoder(str(tmp_path / "ck"))
    assert manifest["task"] == "encoder" and loaded.manifest == manifest
    assert type(loaded.model) is type(encoder.model)
    assert sum(isinstance(m, SparseLinear) for m in loaded.model.modules()) == 12
    sentences = word_sentences(6, seed=3)
    assert torch.equal(embed(loaded, sentences), embed(encoder, sentences))


def test_load_model_encoder_checkpoint_raises(tiny_encoder, tmp_path):
    from sparsa.nn.checkpoint import save_checkpoint
    from sparsa.nn.models import load_model

    save_checkpoint(recovered_tiny(tiny_encoder).model, tiny_encoder.tokenizer, tmp_path / "ck", method={})
    with pytest.raises(SparsaError, match="a sentence-encoder checkpoint; this command takes a causal LM"):
        load_model(str(tmp_path / "ck"))


def test_check_encoder_spec_causal_models_raise(tiny_llama, tiny_tokenizer, tmp_path):
    from sparsa.nn.checkpoint import save_checkpoint
    from sparsa.nn.encoders import check_encoder_spec

    tiny_llama.save_pretrained(tmp_path / "hf")
    with pytest.raises(SparsaError, match="LlamaForCausalLM is a causal LM, not a sentence encoder"):
        check_encoder_spec(str(tmp_path / "hf"))
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    with pytest.raises(SparsaError, match="a causal-LM checkpoint, not a sentence encoder"):
        check_encoder_spec(str(tmp_path / "ck"))
    with pytest.raises(SparsaError, match="MODEL 'smollm2-135m' is not a sentence encoder"):
        check_encoder_spec("smollm2-135m")
    check_encoder_spec(MINILM)
