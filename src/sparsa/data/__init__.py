"""Corpora from installed package archives, tokenization and windows."""

from sparsa.data.corpora import CORPORA, Corpus, load_corpus, read_text_file
from sparsa.data.tokens import calibration_windows, eval_windows, tokenize

__all__ = ["CORPORA", "Corpus", "calibration_windows", "eval_windows", "load_corpus", "read_text_file", "tokenize"]
