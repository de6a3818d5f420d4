"""The baseline selectors find what is planted, and matched_index hits the asked density."""

import math

import torch

from sparsa.attention.selectors import flex_block_scores, matched_index, vertical_slash_scores
from sparsa.kernels.stripe_regions import StripeRegions

REGIONS = StripeRegions(block_m=4, step=2, init=2)  # groups of 8 rows
N = 64


def test_vertical_slash_planted_vertical_scores_highest_in_every_group():
    q = torch.zeros(1, 1, N, 16)
    q[..., 0] = 1.0
    k = torch.randn(1, 1, N, 16, generator=torch.Generator().manual_seed(0)) * 0.01
    k[0, 0, 20, 0] = 10.0
    s = vertical_slash_scores(q, k, REGIONS, 1.0, last=16)
    cand = REGIONS.stripe_candidates(N)
    best = s.masked_fill(~cand, -math.inf).argmax(-1)[0, 0]  # [groups]
    assert (best[3:] == 20).all()  # groups whose stripe range holds key 20


def test_vertical_slash_planted_diagonal_scores_its_keys_in_each_group():
    offset, freqs = 11, torch.arange(1, 17) * 2 * math.pi / N
    i = torch.arange(N)[:, None].float()
    q = torch.cat([torch.cos(freqs * i), torch.sin(freqs * i)], dim=1)[None, None] * 2
    k = torch.cat([torch.cos(freqs * (i + offset)), torch.sin(freqs * (i + offset))], dim=1)[None, None] * 2
    s = vertical_slash_scores(q, k, REGIONS, 1.0, last=16)[0, 0]  # [groups, N]
    for g in range(3, REGIONS.n_groups(N)):
        r0 = g * REGIONS.group
        on_slash = torch.zeros(N, dtype=torch.bool)
        on_slash[r0 - offset: r0 + REGIONS.group - offset] = True
        on_slash &= REGIONS.stripe_candidates(N)[g]
        others = REGIONS.stripe_candidates(N)[g] & ~on_slash
        assert s[g][on_slash].min() > s[g][others].max()


def test_flex_blocks_planted_block_scores_highest():
    q = torch.zeros(1, 1, N, 16)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, N, 16)
    k[0, 0, 12:16, 0] = 5.0  # key block 3 (block_m 4)
    s = flex_block_scores(q, k, REGIONS, 1.0)[0, 0]
    for g in range(2, REGIONS.n_groups(N)):
        cand = REGIONS.stripe_candidates(N)[g]
        assert s[g, 12:16].min() > s[g][cand & ~((torch.arange(N) >= 12) & (torch.arange(N) < 16))].max()


def test_matched_index_hits_target_pairs_within_one_key_per_group():
    scores = torch.rand(2, 3, REGIONS.n_groups(N), N, generator=torch.Generator().manual_seed(0))
    for target in (0, 500, 5000, 9000):  # all candidates: 10080 pairs
        index = matched_index(scores, REGIONS, target)
        index.check(REGIONS, N)
        got = REGIONS.stripe_pairs(index, N)
        assert abs(got - target) <= REGIONS.group * 2 * 3 * REGIONS.n_groups(N)
    full = matched_index(scores, REGIONS, 10**9)
    assert full.nnz == int(REGIONS.stripe_candidates(N).sum()) * 6


def test_matched_index_keeps_the_best_scores():
    scores = torch.rand(1, 1, REGIONS.n_groups(N), N, generator=torch.Generator().manual_seed(1))
    index = matched_index(scores, REGIONS, 2000)
    mask = index.to_mask(N)[0, 0]
    cand = REGIONS.stripe_candidates(N)
    for g in range(REGIONS.n_groups(N)):
        if mask[g].any() and (cand[g] & ~mask[g]).any():
            assert scores[0, 0, g][mask[g]].min() >= scores[0, 0, g][cand[g] & ~mask[g]].max()
