"""Corpora read from package archives: disjoint, deterministic splits with enough text."""

import pytest

from sparsa.data import archives, corpora
from sparsa.data.corpora import EVAL_EVERY, load_corpus, read_text_file, split_documents
from sparsa.errors import SparsaError


def test_split_documents_every_fifth_document_is_evaluation():
    corpus = split_documents("toy", [f"doc{i}" for i in range(11)])
    assert corpus.eval == "doc4\n\ndoc9"
    assert corpus.calib.split("\n\n") == [f"doc{i}" for i in range(11) if i % EVAL_EVERY != 4]


@pytest.mark.parametrize("name, min_words, documents", [("wiki", 300_000, 106), ("shakespeare", 700_000, 42)])
def test_load_corpus_real_archive_splits_documents_disjointly(name, min_words, documents):
    docs = corpora.CORPORA[name]()
    corpus = load_corpus(name)
    assert corpus.documents == len(docs) == documents
    evaluation, calib = docs[EVAL_EVERY - 1::EVAL_EVERY], [d for i, d in enumerate(docs) if i % EVAL_EVERY != 4]
    assert corpus.eval == "\n\n".join(evaluation) and corpus.calib == "\n\n".join(calib)
    assert not set(evaluation) & set(calib)
    assert len((corpus.calib + corpus.eval).split()) > min_words


def test_load_corpus_is_deterministic():
    corpora.load_corpus.cache_clear()
    first = corpora.load_corpus("wiki").eval
    corpora.load_corpus.cache_clear()
    assert corpora.load_corpus("wiki").eval == first


def test_load_corpus_unknown_name_raises():
    with pytest.raises(SparsaError, match="unknown corpus 'c4'; choose from wiki, shakespeare"):
        load_corpus("c4")


def test_find_archive_missing_raises_with_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "archive_dirs", lambda: [tmp_path])
    with pytest.raises(SparsaError, match=r"pip download --no-deps gensim==4.4.0"):
        corpora.wiki_documents()


def test_read_text_file_errors_name_the_file(tmp_path):
    with pytest.raises(SparsaError, match="nope.txt: no such text file"):
        read_text_file(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SparsaError, match="bin.txt: not a readable UTF-8 text file"):
        read_text_file(tmp_path / "bin.txt")
