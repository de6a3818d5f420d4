"""Ten-class digit recognition in several input domains: scikit-learn's bundled digits (no download).

The 1797 8x8 images of ``sklearn.datasets.load_digits()`` (values 0..16) are scaled to [0, 1] and
split once, per class, by a seeded permutation into ``train`` (60%), ``val`` (15%) and ``test``
(the rest, ~25%); every domain holds the same images in each split, transformed:

* ``identity``: the images as they are;
* ``rot90``: rotated a quarter turn counter-clockwise (``torch.rot90`` over the two pixel axes);
* ``flip``: mirrored left-right;
* ``invert``: ``1 - x`` (dark digits on a bright background);
* ``noise``: ``x + N(0, 0.25^2)`` clipped to [0, 1], the noise fixed per image by a seed derived
  from the domain, split and split seed;
* ``rot180``: rotated a half turn (not among the merge suite's default domains);
* ``shift``: moved one pixel right and one down, zeros shifted in (close to ``identity``: a hard
  case for a router; not among the merge suite's default domains).
"""

import zlib
from functools import lru_cache

import numpy as np
import torch

from sparsa.errors import SparsaError

DOMAINS = ("identity", "rot90", "flip", "invert", "noise", "rot180", "shift")
SPLITS = ("train", "val", "test")
FRACTIONS = (0.60, 0.15)  # train, val; test takes the rest
NOISE_STD = 0.25


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [1797, 8, 8] in [0, 1], labels int64 [1797]), read once."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=8)
def split_indices(split: str, seed: int = 0) -> np.ndarray:
    """Sorted indices (int64 [n]) into the 1797 images that make ``split``.

    Per class, a permutation drawn from ``seed`` puts the first 60% in ``train``, the next 15% in
    ``val`` and the rest in ``test``: the three are disjoint and cover every image.
    """
    _check(split, SPLITS, "split")
    labels = _digits()[1]
    rng = np.random.default_rng(seed)
    which = SPLITS.index(split)
    picked = []
    for c in range(int(labels.max()) + 1):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(FRACTIONS[0] * len(members))
        n_val = round(FRACTIONS[1] * len(members))
        bounds = (0, n_train, n_train + n_val, len(members))
        picked.append(members[bounds[which]:bounds[which + 1]])
    out = np.sort(np.concatenate(picked)).astype(np.int64)
    out.flags.writeable = False
    return out


def transform(domain: str, x: torch.Tensor, *, noise_seed: int = 0) -> torch.Tensor:
    """``x`` (float32 [n, 8, 8] in [0, 1]) as seen in ``domain``; a new tensor, same shape and dtype.

    ``noise_seed`` seeds the ``noise`` domain's draw (one [n, 8, 8] draw, row i for image i).
    """
    _check(domain, DOMAINS, "domain")
    if domain == "identity":
        return x.clone()
    if domain == "rot90":
        return torch.rot90(x, 1, dims=(-2, -1)).contiguous()
    if domain == "rot180":
        return torch.rot90(x, 2, dims=(-2, -1)).contiguous()
    if domain == "flip":
        return torch.flip(x, dims=(-1,)).contiguous()
    if domain == "invert":
        return 1.0 - x
    if domain == "shift":
        out = torch.zeros_like(x)
        out[..., 1:, 1:] = x[..., :-1, :-1]
        return out
    gen = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32) * NOISE_STD
    return (x + noise).clamp_(0.0, 1.0)


def digits_domain(domain: str, split: str, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``split`` in ``domain``, the same on every call.

    Args:
        domain: one of :data:`DOMAINS`.
        split: ``train``, ``val`` or ``test``.
        seed: seeds the split's permutation (and, through it, the noise); 0 is the suite's split.

    Returns:
        ``x`` float32 [n, 8, 8] in [0, 1] and ``y`` int64 [n] in 0..9 (n ~ 1078 / 270 / 449).

    Raises:
        SparsaError: an unknown domain or split.
    """
    _check(domain, DOMAINS, "domain")
    idx = split_indices(split, seed)
    images, labels = _digits()
    x = torch.from_numpy(images[idx].copy())
    y = torch.from_numpy(labels[idx].copy())
    noise_seed = zlib.crc32(f"digits/{domain}/{split}/{seed}".encode())
    return transform(domain, x, noise_seed=noise_seed), y


def _check(name: str, known: tuple[str, ...], what: str) -> None:
    if name not in known:
        raise SparsaError(f"unknown digits {what} {name!r}; known: {', '.join(known)}")
