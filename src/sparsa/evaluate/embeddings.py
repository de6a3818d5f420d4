"""How closely a compressed encoder's sentence embeddings follow the dense model's.

Two measures on the same held-out sentences:

* cosine of each sentence's compressed embedding to its dense one (mean and worst);
* top-k neighbour overlap: for each sentence, the share of its ``k`` nearest other sentences
  (by cosine, dense embeddings) that are also among its ``k`` nearest by the compressed
  embeddings; 1.0 means retrieval over these sentences ranks the same neighbours.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sparsa.errors import SparsaError


@dataclass(frozen=True)
class EmbeddingAgreement:
    """Agreement of ``sentences`` compressed embeddings with the dense ones (see module docstring)."""

    cosine_mean: float
    cosine_min: float
    topk_overlap: float
    k: int
    sentences: int

    def to_dict(self) -> dict:
        return asdict(self)


def neighbours(E: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] indices of each row's ``k`` most cosine-similar other rows of ``E: [n, H]``."""
    E = F.normalize(E.float(), dim=-1)
    sim = E @ E.T  # [n, n]
    sim.fill_diagonal_(float("-inf"))
    return sim.topk(k, dim=1).indices


def embedding_agreement(dense: torch.Tensor, compressed: torch.Tensor, *, k: int = 10) -> EmbeddingAgreement:
    """Compare two [n, H] embedding matrices of the same ``n`` sentences (row i = sentence i)."""
    if dense.shape != compressed.shape or dense.ndim != 2:
        raise SparsaError(f"embeddings to compare must be two equal [n, H] matrices, got "
                          f"{list(dense.shape)} and {list(compressed.shape)}")
    n = dense.shape[0]
    if not 1 <= k < n:
        raise SparsaError(f"top-{k} neighbour overlap needs more than {k} sentences, got {n}")
    cos = F.cosine_similarity(dense.float(), compressed.float(), dim=-1)  # [n]
    a, b = neighbours(dense, k), neighbours(compressed, k)
    shared = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum(dim=1)  # [n] neighbours in both lists
    return EmbeddingAgreement(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                              topk_overlap=float(shared.float().mean() / k), k=k, sentences=n)
