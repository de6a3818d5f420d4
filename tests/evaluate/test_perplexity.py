"""Perplexity: the GPTQ protocol computed exactly, deterministic, with clear errors."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsa.data.tokens import bos_for
from sparsa.errors import SparsaError
from sparsa.evaluate import load_texts, perplexities, perplexity
from conftest import word_text


class Uniform(nn.Module):
    """A 'model' whose logits are all equal: every token has probability 1/vocab."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, ids):
        return SimpleNamespace(logits=torch.zeros(*ids.shape, self.vocab))


def test_perplexity_uniform_model_equals_vocab_size():
    result = perplexity(Uniform(50), torch.randint(0, 50, (3, 8)), progress=False)
    assert result.ppl == pytest.approx(50, rel=1e-6)
    assert (result.windows, result.seqlen, result.predicted_tokens) == (3, 8, 21)


def test_perplexity_tiny_llama_matches_manual_nll_sum(tiny_llama):
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(windows).logits[:, :-1].double(), -1)
    nll = -logp.gather(-1, windows[:, 1:, None]).sum().item()
    result = perplexity(tiny_llama, windows, progress=False)
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll / 30), rel=1e-5)
    assert perplexity(tiny_llama, windows, progress=False).ppl == result.ppl


def test_perplexities_text_file_windows_and_context_limit(tiny_llama, tiny_tokenizer, tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(100))
    texts = load_texts(None, str(path))
    assert list(texts) == [str(path)]
    bos = bos_for(tiny_tokenizer, "auto")
    results = perplexities(tiny_llama, tiny_tokenizer, texts, seqlen=30, max_windows=None, bos=bos, progress=False)
    assert results[str(path)].windows == 3
    with pytest.raises(SparsaError, match="--seqlen 512 exceeds the model's context of 256 tokens"):
        perplexities(tiny_llama, tiny_tokenizer, texts, seqlen=512, max_windows=None, bos=bos)


def test_load_texts_defaults_and_errors():
    assert list(load_texts(None, None)) == ["wiki"]
    assert list(load_texts("shakespeare, wiki", None)) == ["shakespeare", "wiki"]
    with pytest.raises(SparsaError, match="--ppl 'ptb': unknown corpus"):
        load_texts("wiki,ptb", None)


@pytest.mark.parametrize("ppl", ["", "wiki,", ",wiki", "wiki,,shakespeare", " "])
def test_load_texts_empty_corpus_name_names_ppl_and_the_corpora(ppl):
    with pytest.raises(SparsaError, match=r"--ppl .*: empty corpus name; give comma-separated names from wiki, "
                                          r"shakespeare"):
        load_texts(ppl, None)
