"""Sentence splitting for encoders: the documented rule, duplicates dropped, short splits named."""

import pytest

from sparsa.data.sentences import split_sentences, take_sentences
from sparsa.errors import SparsaError

TEXT = ("Title\n\nThe first sentence has exactly six words. A second one follows it here! Too short.\n"
        "Is this third sentence also long enough? The first sentence has exactly six words.")


def test_split_sentences_keeps_word_range_in_order_without_duplicates():
    assert split_sentences(TEXT) == ["The first sentence has exactly six words.", "A second one follows it here!",
                                     "Is this third sentence also long enough?"]


def test_split_sentences_max_words_drops_long_ones():
    assert split_sentences(TEXT, min_words=2, max_words=2) == ["Too short."]


def test_take_sentences_fewer_than_asked_names_source():
    with pytest.raises(SparsaError, match=r"wiki evaluation split: asked for 4 sentences, it holds 3"):
        take_sentences(TEXT, 4, source="wiki evaluation split")


def test_split_sentences_bad_range_raises():
    with pytest.raises(SparsaError, match="min_words"):
        split_sentences(TEXT, min_words=5, max_words=4)
