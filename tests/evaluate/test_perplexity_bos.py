"""Perplexity under ``--bos``: the BOS that opens a window is context, never a scored target."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsa.data.tokens import bos_for, eval_windows, tokenize
from sparsa.evaluate import perplexities, perplexity
from conftest import word_text
from tiny_bos import BOS_ID, bos_tokenizer

VOCAB = 128


class ShunsBos(nn.Module):
    """A 'model' uniform over every token but BOS, which it never predicts (logit -1e9): its
    perplexity is exactly ``VOCAB - 1`` if and only if no scored target is BOS. It records its inputs."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=256)
        self.seen = []

    def forward(self, ids):
        self.seen.append(ids.clone())
        logits = torch.zeros(*ids.shape, VOCAB)
        logits[..., BOS_ID] = -1e9
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bos") / "words.txt"
    path.write_text(word_text(400))
    return {str(path): word_text(400)}


@pytest.mark.parametrize("protocol, windows", [("auto", 400 // 19), ("once", 401 // 20), ("never", 400 // 20)])
def test_perplexities_bos_position_is_never_a_target(text_file, protocol, windows):
    model = ShunsBos()
    result = next(iter(perplexities(model, bos_tokenizer(), text_file, seqlen=20, max_windows=None,
                                    bos=bos_for(bos_tokenizer(), protocol), progress=False).values()))
    assert result.ppl == pytest.approx(VOCAB - 1, rel=1e-6)  # a BOS target would cost 1e9 nats
    assert (result.windows, result.seqlen, result.predicted_tokens) == (windows, 20, windows * 19)
    inputs = torch.cat(model.seen)  # [windows, 20]
    bos_count = {"auto": windows, "once": 1, "never": 0}[protocol]
    assert (inputs[:, 0] == BOS_ID).sum() == bos_count and (inputs == BOS_ID).sum() == bos_count


def test_perplexities_auto_on_tiny_llama_scores_the_bos_windows(tiny_llama, text_file):
    tokenizer = bos_tokenizer()
    bos = bos_for(tokenizer, "auto")
    result = next(iter(perplexities(tiny_llama, tokenizer, text_file, seqlen=20, max_windows=4, bos=bos,
                                    progress=False).values()))
    windows = eval_windows(tokenize(tokenizer, next(iter(text_file.values()))), 20, 4, bos=bos)  # [4, 20]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(windows).logits[:, :-1].double(), -1)  # [4, 19, vocab]
    nll = -logp.gather(-1, windows[:, 1:, None]).sum().item()
    assert result.predicted_tokens == 4 * 19 and result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll / 76), rel=1e-5)
    assert result.ppl != pytest.approx(perplexity(tiny_llama, windows[:, 1:], progress=False).ppl, rel=1e-3)
