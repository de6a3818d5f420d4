"""Embedding agreement: identical embeddings agree fully, noise lowers both measures, bad input is named."""

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.evaluate.embeddings import embedding_agreement, neighbours


def unit_rows(n=40, h=16, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, h, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_embedding_agreement_identical_is_perfect():
    E = unit_rows()
    a = embedding_agreement(E, E.clone(), k=5)
    assert a.cosine_mean == pytest.approx(1.0) and a.cosine_min == pytest.approx(1.0)
    assert a.topk_overlap == 1.0 and a.k == 5 and a.sentences == 40


def test_embedding_agreement_noise_lowers_cosine_and_overlap():
    E = unit_rows()
    noisy = E + 0.5 * unit_rows(seed=1)
    a = embedding_agreement(E, noisy, k=5)
    assert a.cosine_min < a.cosine_mean < 1.0 and a.topk_overlap < 1.0


def test_neighbours_excludes_self_and_ranks_by_cosine():
    E = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert neighbours(E, 1).flatten().tolist() == [1, 0, 1]


@pytest.mark.parametrize("dense, compressed, k, message", [
    (unit_rows(8), unit_rows(9), 3, "two equal"), (unit_rows(8), unit_rows(8), 8, "more than 8 sentences")])
def test_embedding_agreement_bad_input_raises(dense, compressed, k, message):
    with pytest.raises(SparsaError, match=message):
        embedding_agreement(dense, compressed, k=k)
