"""Tracks: the connected components of the keypoint match graph (union-find over the kept pairs'
inlier matches, by scipy's connected components on a sparse graph).

A component with two keypoints in one image was joined by an outlier match: it is split at its
matches that close no triangle (:func:`drop_unsupported_edges`); observations still ambiguous
after that (two keypoints of one image in one track) are dropped. Tracks with fewer
than ``min_views`` or more than ``max_views`` observations are dropped (GLOMAP's 3 and 100); when
``max_tracks`` is set, the longest are kept.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components


@dataclass
class Tracks:
    """Observations grouped into tracks.

    Args:
        obs_image: [M] int64 image (row of the database) of each observation.
        obs_keypoint: [M] int64 keypoint index in that image.
        obs_track: [M] int64 track of each observation, 0..T-1, sorted.
        n_tracks: T.
        report: counts of what was dropped and why.
    """

    obs_image: torch.Tensor
    obs_keypoint: torch.Tensor
    obs_track: torch.Tensor
    n_tracks: int
    report: dict


def build_tracks(keypoint_counts: list[int], pairs: torch.Tensor, matches: list[np.ndarray], *, min_views: int = 3,
                 max_views: int = 100, max_tracks: int | None = None) -> Tracks:
    """Tracks of the matches ``matches[e]`` [m_e, 2] between images ``pairs[e]`` (only the pairs given)."""
    offsets = np.concatenate([[0], np.cumsum(keypoint_counts)]).astype(np.int64)
    n_nodes = int(offsets[-1])
    p = pairs.numpy()
    a = np.concatenate([offsets[i] + m[:, 0] for (i, _), m in zip(p, matches)] or [np.zeros(0, np.int64)])
    b = np.concatenate([offsets[j] + m[:, 1] for (_, j), m in zip(p, matches)] or [np.zeros(0, np.int64)])
    label = components(a, b, n_nodes)
    a, b, n_split = drop_unsupported_edges(a, b, label, offsets)
    if n_split:
        label = components(a, b, n_nodes)
    matched = np.zeros(n_nodes, bool)
    matched[a], matched[b] = True, True
    node = np.flatnonzero(matched)
    image = np.searchsorted(offsets, node, side="right") - 1
    track = label[node]
    n_raw = len(np.unique(track))
    # a track seen twice in one image is ambiguous there: those observations go, the rest stay
    key = track.astype(np.int64) * len(keypoint_counts) + image
    _, inverse, per_image = np.unique(key, return_inverse=True, return_counts=True)
    ambiguous = per_image[inverse] > 1
    length = np.bincount(track[~ambiguous], minlength=label.max() + 1 if len(label) else 0)
    ok = ~ambiguous & (length[track] >= min_views) & (length[track] <= max_views)
    report = {"raw_tracks": int(n_raw), "split_matches": n_split, "ambiguous_observations": int(ambiguous.sum()),
              "short_tracks": int(len(np.unique(track[~ambiguous & (length[track] < min_views)]))),
              "long_tracks": int(len(np.unique(track[length[track] > max_views])))}
    node, image, track = node[ok], image[ok], track[ok]
    kept, track = np.unique(track, return_inverse=True)
    if max_tracks is not None and len(kept) > max_tracks:
        lengths = np.bincount(track)
        chosen = np.sort(np.argsort(-lengths, kind="stable")[:max_tracks])
        remap = np.full(len(kept), -1)
        remap[chosen] = np.arange(len(chosen))
        sel = remap[track] >= 0
        node, image, track = node[sel], image[sel], remap[track[sel]]
        report["capped_tracks"] = int(len(kept) - max_tracks)
        kept = chosen
    order = np.argsort(track, kind="stable")
    node, image, track = node[order], image[order], track[order]
    report["tracks"] = int(len(kept))
    report["observations"] = int(len(node))
    return Tracks(torch.from_numpy(image.astype(np.int64)), torch.from_numpy(node - offsets[image]),
                  torch.from_numpy(track.astype(np.int64)), int(len(kept)), report)


def components(a: np.ndarray, b: np.ndarray, n_nodes: int) -> np.ndarray:
    """[n_nodes] connected-component label of every node of the graph with edges (a, b)."""
    graph = scipy.sparse.coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[1]


def drop_unsupported_edges(a: np.ndarray, b: np.ndarray, label: np.ndarray,
                           offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Split components that hold two keypoints of one image at their unsupported matches.

    A track's matches form a near-clique (every pair of its views matched), so each of them closes
    triangles with the others; an outlier match that joins two tracks closes none. In components
    with a repeated image, matches in no triangle are dropped. Returns (a, b, matches dropped)."""
    node = np.unique(np.concatenate([a, b]))
    image = np.searchsorted(offsets, node, side="right") - 1
    key = label[node].astype(np.int64) * (len(offsets) - 1) + image
    _, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
    conflicted = np.zeros(label.max() + 1 if len(label) else 0, bool)
    conflicted[label[node][count[inverse] > 1]] = True
    inside = conflicted[label[a]]
    if not inside.any():
        return a, b, 0
    n = len(label)
    A = scipy.sparse.coo_matrix((np.ones(int(inside.sum())), (a[inside], b[inside])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).astype(np.float64)
    support = np.asarray((A @ A)[a[inside], b[inside]]).ravel()  # triangles through each match
    weak = np.zeros(len(a), bool)
    weak[np.flatnonzero(inside)[support == 0]] = True
    return a[~weak], b[~weak], int(weak.sum())
