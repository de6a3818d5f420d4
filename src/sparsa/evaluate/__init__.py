"""Measuring models: perplexity on corpora and text files."""

from sparsa.evaluate.perplexity import PerplexityResult, perplexity
from sparsa.evaluate.texts import load_texts, perplexities

__all__ = ["PerplexityResult", "load_texts", "perplexities", "perplexity"]
