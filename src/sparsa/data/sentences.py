"""Sentences from a corpus split, for sentence encoders (calibration and held-out evaluation).

Rule: each non-empty line (a paragraph) is cut after ``.``, ``!`` or ``?`` followed by white
space; a piece counts as a sentence when it has ``min_words`` to ``max_words`` words (titles,
headings and list fragments fall outside). Order follows the text, duplicates are dropped.
"""

import re

from sparsa.errors import SparsaError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, *, min_words: int = 6, max_words: int = 60) -> list[str]:
    """The sentences of ``text`` by the rule of the module docstring."""
    if not 1 <= min_words <= max_words:
        raise SparsaError(f"sentences need 1 <= min_words ({min_words}) <= max_words ({max_words})")
    out: dict[str, None] = {}
    for line in text.splitlines():
        for piece in SENTENCE_END.split(line.strip()):
            if min_words <= len(piece.split()) <= max_words:
                out.setdefault(piece, None)
    return list(out)


def take_sentences(text: str, count: int, *, source: str = "text") -> list[str]:
    """The first ``count`` sentences of ``text``; an error names ``source`` when it holds fewer."""
    found = split_sentences(text)
    if count < 1 or len(found) < count:
        raise SparsaError(f"{source}: asked for {count} sentences, it holds {len(found)}")
    return found[:count]


def corpus_sentences(name: str, held_out: int) -> tuple[list[str], list[str]]:
    """(calibration sentences, the first ``held_out`` sentences of the evaluation split) of corpus
    ``name``: the two never share a document (see :mod:`sparsa.data.corpora`)."""
    from sparsa.data.corpora import load_corpus

    corpus = load_corpus(name)
    return split_sentences(corpus.calib), take_sentences(corpus.eval, held_out, source=f"{name} evaluation split")
