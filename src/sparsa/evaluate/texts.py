"""Perplexity over named evaluation texts: corpus evaluation splits and user text files."""

from sparsa.data.corpora import CORPORA, load_corpus, read_text_file
from sparsa.data.tokens import Bos, eval_windows, tokenize
from sparsa.errors import SparsaError
from sparsa.evaluate.perplexity import PerplexityResult, perplexity


def corpus_names(ppl: str) -> list[str]:
    """``--ppl a,b`` -> ``["a", "b"]``; SparsaError naming --ppl for an empty or unknown name."""
    names = [n.strip() for n in ppl.split(",")]
    for name in names:
        if not name:
            raise SparsaError(f"--ppl {ppl!r}: empty corpus name; give comma-separated names from "
                              f"{', '.join(CORPORA)} (e.g. --ppl {','.join(CORPORA)})")
        if name not in CORPORA:
            raise SparsaError(f"--ppl {name!r}: unknown corpus; choose from {', '.join(CORPORA)}")
    return names


def load_texts(ppl: str | None, text_file: str | None) -> dict[str, str]:
    """Evaluation texts by name: corpus eval splits from ``--ppl a,b`` (default ``wiki`` when no
    text file is given) and the whole ``--text-file``, keyed by its path."""
    names = corpus_names(ppl) if ppl is not None else ([] if text_file else ["wiki"])
    texts = {name: load_corpus(name).eval for name in names}
    if text_file:
        texts[text_file] = read_text_file(text_file)
    return texts


def perplexities(model, tokenizer, texts: dict[str, str], *, seqlen: int, max_windows: int | None, bos: Bos,
                 device: str = "cpu", progress: bool = True) -> dict[str, PerplexityResult]:
    """Perplexity of ``model`` on each text; all are tokenized and windowed before any forward pass.

    ``bos`` (:func:`sparsa.data.tokens.bos_for`) says where windows carry the tokenizer's BOS token.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and seqlen > limit:
        raise SparsaError(f"--seqlen {seqlen} exceeds the model's context of {limit} tokens")
    windows = {name: eval_windows(tokenize(tokenizer, text), seqlen, max_windows, bos=bos, source=name)
               for name, text in texts.items()}
    return {name: perplexity(model, w, device=device, progress=progress, desc=f"ppl {name}")
            for name, w in windows.items()}
