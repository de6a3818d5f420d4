"""Each stage of global SfM against a closed-form or brute-force reference on small scenes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.data.rotations import angle_axis_to_matrix, hat
from sparsa.sfm.relative_pose import match_depths, pose_candidates, segment_median
from sparsa.sfm.rotation_averaging import average_rotations, spanning_tree_rotations
from sparsa.sfm.tracks import build_tracks
from sparsa.sfm.triangulate import max_ray_angle_deg, triangulate
from sparsa.sfm.view_graph import largest_component, rotation_angles, triangle_errors


def random_rotations(n: int, g: torch.Generator, scale: float = 3.0) -> torch.Tensor:
    return angle_axis_to_matrix((torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * scale)


def all_pairs(n: int) -> torch.Tensor:
    return torch.combinations(torch.arange(n), 2)


def test_essential_decomposition_and_cheirality_recover_the_pose():
    g = torch.Generator().manual_seed(0)
    R, t = random_rotations(8, g), torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = t / t.norm(dim=1, keepdim=True)
    X = torch.randn(8, 50, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 6.0], dtype=torch.float64)
    Xj = X @ R.transpose(1, 2) + t[:, None]
    E = hat(t) @ R * torch.rand(8, 1, 1, generator=g, dtype=torch.float64)  # any scale
    Rc, tc = pose_candidates(E)
    for e in range(8):
        front = []
        for k in range(4):
            d_i, d_j, _ = match_depths(Rc[e, k].expand(50, 3, 3), tc[e, k].expand(50, 3),
                                       X[e] / X[e].norm(dim=1, keepdim=True), Xj[e] / Xj[e].norm(dim=1, keepdim=True))
            front.append(int(((d_i > 0) & (d_j > 0)).sum()))
        k = int(np.argmax(front))
        assert front[k] == 50 and sorted(front)[-2] < 50  # one candidate sees every point in front
        assert torch.allclose(Rc[e, k], R[e], atol=1e-9) and torch.allclose(tc[e, k], t[e], atol=1e-9)
        d_i, d_j, _ = match_depths(Rc[e, k].expand(50, 3, 3), tc[e, k].expand(50, 3),
                                   X[e] / X[e].norm(dim=1, keepdim=True), Xj[e] / Xj[e].norm(dim=1, keepdim=True))
        assert torch.allclose(d_i, X[e].norm(dim=1), rtol=1e-9)  # the depths are the true distances


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(-1e3, 1e3)), max_size=60))
def test_segment_median_matches_numpy(items):
    seg = torch.tensor([s for s, _ in items], dtype=torch.int64)
    val = torch.tensor([v for _, v in items], dtype=torch.float64)
    out = segment_median(val, seg, 6)
    for s in range(6):
        v = np.sort(val[seg == s].numpy())
        assert out[s] == (v[len(v) // 2] if len(v) else 0.0)


def test_spanning_tree_chains_exact_rotations():
    g = torch.Generator().manual_seed(1)
    truth = random_rotations(12, g)
    pairs = all_pairs(12)
    rel = truth[pairs[:, 1]] @ truth[pairs[:, 0]].transpose(1, 2)
    chained = spanning_tree_rotations(12, pairs, rel, torch.rand(len(pairs), generator=g))
    gauge = chained[0].T @ truth[0]
    assert torch.allclose(chained @ gauge, truth, atol=1e-10)


def test_rotation_averaging_with_noise_and_outliers_beats_the_spanning_tree():
    g = torch.Generator().manual_seed(2)
    n = 40
    truth = random_rotations(n, g)
    pairs = all_pairs(n)
    rel = truth[pairs[:, 1]] @ truth[pairs[:, 0]].transpose(1, 2)
    noise = angle_axis_to_matrix(torch.randn(len(pairs), 3, generator=g, dtype=torch.float64) * np.radians(1.0))
    rel = noise @ rel
    outliers = torch.rand(len(pairs), generator=g) < 0.15
    rel[outliers] = random_rotations(int(outliers.sum()), g, scale=6.0)
    weights = torch.where(outliers, 1000.0, 10.0)  # the spanning tree prefers the outliers
    start = spanning_tree_rotations(n, pairs, rel, weights)
    averaged, report = average_rotations(n, pairs, rel, weights)

    def error(R):
        gauge = R[0].T @ truth[0]  # align on image 0, then compare every image
        return rotation_angles((R @ gauge).transpose(1, 2) @ truth)

    oracle, _ = average_rotations(n, pairs[~outliers], rel[~outliers], weights[~outliers])  # knows the outliers
    assert error(start).median() > 5.0
    assert error(oracle).max() < 1.0
    gauge = averaged[0].T @ oracle[0]
    assert rotation_angles((averaged @ gauge).transpose(1, 2) @ oracle).max() < 0.05  # as if it knew them
    assert report.iterations > 10 and report.median_residual_deg < 2.0


def test_triangle_test_flags_the_corrupted_edge_and_components_split():
    g = torch.Generator().manual_seed(3)
    truth = random_rotations(10, g)
    pairs = all_pairs(10)
    rel = truth[pairs[:, 1]] @ truth[pairs[:, 0]].transpose(1, 2)
    rel[7] = angle_axis_to_matrix(torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)) @ rel[7]
    err, count = triangle_errors(10, pairs, rel, per_edge=8)
    assert torch.all(count == 8)
    assert err[7] == pytest.approx(np.degrees(0.3), rel=1e-6) and torch.all(torch.cat([err[:7], err[8:]]) < 1e-4)  # arccos near 1: ~1e-6 deg
    keep = torch.zeros(len(pairs), dtype=torch.bool)
    keep[(pairs[:, 1] < 6)] = True  # images 0-5 connected, 6-9 alone
    assert largest_component(10, pairs, keep).tolist() == [True] * 6 + [False] * 4


def union_find(edges):
    """Components of (image, keypoint) nodes by plain-Python union-find."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for u, v in edges:
        parent[find(u)] = find(v)
    groups = {}
    for node in list(parent):
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


def brute_force_tracks(pairs, matches, min_views, max_views):
    """The tracks' definition, literally: components; in those with a repeated image, drop the matches
    in no triangle and split again; drop observations still sharing an image; keep min..max views."""
    edges = [((i, a), (j, b)) for (i, j), m in zip(pairs.tolist(), matches) for a, b in m.tolist()]
    conflicted = set()
    for comp in union_find(edges):
        if len({i for i, _ in comp}) < len(comp):
            conflicted |= set(comp)
    neighbours = {}
    for u, v in edges:
        if u in conflicted:
            neighbours.setdefault(u, set()).add(v)
            neighbours.setdefault(v, set()).add(u)
    kept = [(u, v) for u, v in edges if u not in conflicted or neighbours[u] & neighbours[v]]
    tracks = []
    for comp in union_find(kept):
        images = [i for i, _ in comp]
        obs = sorted(o for o in comp if images.count(o[0]) == 1)
        if min_views <= len(obs) <= max_views:
            tracks.append(obs)
    return sorted(tracks)


def tracks_of(t):
    got = {}
    for i, k, track in zip(t.obs_image.tolist(), t.obs_keypoint.tolist(), t.obs_track.tolist()):
        got.setdefault(track, []).append((i, k))
    return sorted(sorted(v) for v in got.values())


def test_tracks_match_brute_force_and_outlier_matches_are_split_off():
    rng = np.random.default_rng(4)
    counts = [40] * 6
    pairs = all_pairs(6)
    matches = [np.unique(rng.integers(0, 40, size=(6, 2)), axis=0) for _ in range(len(pairs))]
    for low, high in ((2, 1000), (2, 2), (3, 4), (5, 1000)):
        assert tracks_of(build_tracks(counts, pairs, matches, min_views=low, max_views=high)) == \
            brute_force_tracks(pairs, matches, low, high)
    capped = build_tracks(counts, pairs, matches, min_views=2, max_views=1000, max_tracks=3)
    lengths = sorted(map(len, brute_force_tracks(pairs, matches, 2, 1000)))
    assert capped.n_tracks == 3 and torch.bincount(capped.obs_track).min() >= lengths[-3]


def test_an_outlier_match_joining_two_tracks_is_cut():
    """Two 4-view tracks (keypoint 0 and keypoint 1 in images 0-3, every pair matched) and one outlier
    match joining them (0, 0) - (1, 1): the tracks come back whole."""
    pairs = all_pairs(4)
    matches = [np.array([[0, 0], [1, 1]]) for _ in range(len(pairs))]
    matches[0] = np.array([[0, 0], [1, 1], [0, 1]])  # images 0, 1: keypoint 0 also matched to keypoint 1
    t = build_tracks([2] * 4, pairs, matches, min_views=3, max_views=10)
    assert tracks_of(t) == [[(i, 0) for i in range(4)], [(i, 1) for i in range(4)]]
    assert t.report["split_matches"] == 1 and t.report["ambiguous_observations"] == 0


def test_triangulation_recovers_points_from_exact_rays():
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    points = torch.randn(20, 3, generator=g, dtype=torch.float64)
    obs_image = torch.arange(5).repeat(20)
    obs_track = torch.arange(20).repeat_interleave(5)
    rays = points[obs_track] - centres[obs_image]
    rays = rays / rays.norm(dim=1, keepdim=True)
    X, ok = triangulate(centres, rays, obs_image, obs_track, 20)
    assert ok.all() and torch.allclose(X, points, atol=1e-10)
    two = (obs_image < 2)
    angle = max_ray_angle_deg(points, centres, obs_image[two], obs_track[two], 20)
    d0, d1 = points - centres[0], points - centres[1]
    exact = torch.rad2deg(torch.arccos((d0 * d1).sum(1) / (d0.norm(dim=1) * d1.norm(dim=1))))
    assert torch.allclose(angle, exact, atol=1e-6)  # exact for two views
