"""The view graph: images as nodes, pairs with a relative rotation as edges. Its largest connected
component, and the triangle (cycle) consistency test that drops edges whose rotation disagrees
with the loops it closes.

A triangle (i, j, k) with edges oriented ``R_ab = cam_b_from_cam_a`` is consistent when
``R_ki R_jk R_ij = I``; its error is that product's rotation angle. An edge's error is the median
over up to ``per_edge`` of its triangles (its third vertices drawn at random among the common
neighbours); edges in no triangle are kept.
"""

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components

from sparsa.sfm.relative_pose import segment_median


def largest_component(n_images: int, pairs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[n_images] bool: the images of the largest connected component of the kept edges (an image
    with no kept edge is a component of one)."""
    p = pairs[keep].numpy()
    graph = scipy.sparse.coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n_images, n_images))
    _, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels == np.bincount(labels).argmax())


def rotation_angles(R: torch.Tensor) -> torch.Tensor:
    """[...] rotation angle in degrees of [..., 3, 3] rotations."""
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def directed(n_images: int, pairs: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(edge index [n, n] int64, -1 where no edge; rotations [2E, 3, 3]) with both directions of each
    pair: entry ``index[a, b]`` is ``cam_b_from_cam_a``."""
    E = pairs.shape[0]
    index = torch.full((n_images, n_images), -1, dtype=torch.int64)
    index[pairs[:, 0], pairs[:, 1]] = torch.arange(E)
    index[pairs[:, 1], pairs[:, 0]] = torch.arange(E, 2 * E)
    return index, torch.cat([R, R.transpose(1, 2)])


def triangle_errors(n_images: int, pairs: torch.Tensor, R: torch.Tensor, *, per_edge: int = 16,
                    seed: int = 0, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """([E] median triangle error in degrees of each edge, [E] triangles it was measured on).

    Memory is ``chunk x n_images`` per step; work ``E x per_edge`` triangles."""
    E = pairs.shape[0]
    index, Rd = directed(n_images, pairs, R)
    adjacent = index >= 0
    g = torch.Generator().manual_seed(seed)
    errors, edges, counts = [], [], torch.zeros(E, dtype=torch.int64)
    for lo in range(0, E, chunk):
        i, j = pairs[lo:lo + chunk, 0], pairs[lo:lo + chunk, 1]
        common = adjacent[i] & adjacent[j]  # [c, n]
        scores = torch.rand(common.shape, generator=g).masked_fill_(~common, -1.0)
        top, k = scores.topk(min(per_edge, n_images), dim=1)
        found = top >= 0
        e = (torch.arange(lo, lo + len(i))[:, None]).expand_as(k)[found]
        ii, jj, kk = i[:, None].expand_as(k)[found], j[:, None].expand_as(k)[found], k[found]
        loop = Rd[index[kk, ii]] @ Rd[index[jj, kk]] @ Rd[index[ii, jj]]
        errors.append(rotation_angles(loop))
        edges.append(e)
        counts += torch.bincount(e, minlength=E) if len(e) else 0
    err = torch.cat(errors) if errors else torch.zeros(0, dtype=R.dtype)
    edge = torch.cat(edges) if edges else torch.zeros(0, dtype=torch.int64)
    return segment_median(err, edge, E), counts
