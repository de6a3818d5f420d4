"""The baseline selectors: FlexPrefill's gamma rule per head, their mapping to group stripes, and
one gamma for all heads matched to a target mean density."""

import math

import torch

from sparsa.attention.selectors import (Cover, flex_block_mass, flex_blocks_index, flex_stripes, mask_pairs,
                                        matched_gamma, vertical_slash_index, vertical_slash_mass,
                                        vertical_slash_stripes)
from sparsa.kernels.stripe_regions import StripeRegions

REGIONS = StripeRegions(block_m=4, step=2, init=2)  # groups of 8 rows
N = 64


def random_qk(heads: int = 3, n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, n, 16, generator=g) * 1.5, torch.randn(1, heads, n, 16, generator=g) * 1.5


def test_cover_keeps_per_head_the_fewest_largest_entries_reaching_gamma():
    mass = torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(0))
    cover = Cover.of(mass)
    for gamma in (0.05, 0.5, 0.9, 1.0):
        keep = cover.keep(gamma)
        for m, kept in zip(mass.view(6, 50), keep.view(6, 50)):
            total, inside = float(m.sum()), m[kept]
            assert float(inside.sum()) >= gamma * total * (1 - 1e-9)  # reaches gamma
            assert float(inside.sum() - inside.min()) < gamma * total  # one fewer does not
            assert kept.all() or inside.min() >= m[~kept].max()  # the largest ones
    assert not cover.keep(0.0).any()


def test_flex_blocks_keep_per_head_the_fewest_blocks_reaching_gamma_over_all_query_tiles():
    q, k = random_qk()
    mass = flex_block_mass(q, k, REGIONS, 0.25)  # [1, 3, T, T]
    T = N // REGIONS.block_m
    assert torch.allclose(mass.sum(-1), torch.ones(1, 3, T)) and (mass.triu(1) == 0).all()
    gamma = 0.9
    keep = Cover.of(mass.flatten(2)).keep(gamma).view_as(mass)
    for h in range(3):
        m, kept = mass[0, h], keep[0, h]
        assert float(m[kept].sum()) >= gamma * T * (1 - 1e-6) > float(m[kept].sum() - m[kept].min())
        assert m[kept].min() >= m[~kept].max()
    per_head = keep.sum(dim=(2, 3))
    assert len(set(per_head[0].tolist())) > 1  # each head its own count


def test_flex_stripes_gather_the_union_of_the_groups_tiles_blocks_in_the_stripe_range():
    T = N // REGIONS.block_m
    blocks = torch.zeros(1, 1, T, T, dtype=torch.bool)
    blocks[0, 0, 10, 1] = True  # tile 10 (group 5) wants key block 1: keys 4..7
    blocks[0, 0, 11, 3] = True  # tile 11 (group 5) wants key block 3: keys 12..15
    blocks[0, 0, 12, 0] = True  # tile 12 (group 6) wants key block 0: keys 0..3, init is 0..1
    blocks[0, 0, 5, 5] = True  # a diagonal block: the group's own rows, dense already
    mask = flex_stripes(blocks, REGIONS, N)[0, 0]
    assert mask[5].nonzero().flatten().tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert mask[6].nonzero().flatten().tolist() == [2, 3]
    assert mask.sum() == 10


def test_flex_blocks_index_is_the_kept_blocks_at_the_matched_gamma():
    q, k = random_qk(seed=1)
    mass = flex_block_mass(q, k, REGIONS, 0.25)
    cover = Cover.of(mass.flatten(2))
    for gamma in (0.5, 0.8, 0.95):
        expect = flex_stripes(cover.keep(gamma).view_as(mass), REGIONS, N)
        index = flex_blocks_index(q, k, REGIONS, 0.25, mask_pairs(expect, REGIONS))
        index.check(REGIONS, N)
        assert torch.equal(index.to_mask(N), expect)


def test_flex_blocks_index_matches_mean_density_within_one_block(one_thread):
    regions = StripeRegions(block_m=16, step=2, init=16)
    n = 512
    q, k = random_qk(heads=4, n=n, seed=2)
    block = regions.block_m * regions.group  # one key block gathered by one group of one head
    for target in (0, 20_000, 150_000, 400_000):
        index = flex_blocks_index(q, k, regions, 0.25, target)
        assert abs(regions.stripe_pairs(index, n) - target) <= block
    per_head = index.counts().sum(dim=-1)[0]  # the last target
    assert len(set(per_head.tolist())) > 1  # heads get different densities


def test_matched_gamma_picks_the_closest_of_the_two_candidates_around_the_target():
    gammas = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0], dtype=torch.float64)
    pairs = {0.0: 0, 0.2: 10, 0.5: 40, 0.7: 41, 1.0: 90}
    assert matched_gamma(pairs.__getitem__, gammas, 30) == 0.5
    assert matched_gamma(pairs.__getitem__, gammas, 20) == 0.2
    assert matched_gamma(pairs.__getitem__, gammas, 41) == 0.7
    assert matched_gamma(pairs.__getitem__, gammas, 1000) == 1.0


def test_vertical_slash_planted_vertical_is_kept_in_every_group_first():
    q = torch.zeros(1, 1, N, 16)
    q[..., 0] = 1.0
    k = torch.randn(1, 1, N, 16, generator=torch.Generator().manual_seed(0)) * 0.01
    k[0, 0, 20, 0] = 10.0
    vertical, slash = vertical_slash_mass(q, k, 1.0, last=16)
    assert vertical.argmax() == 20 and math.isclose(float(vertical.sum()), 16, rel_tol=1e-5)
    keep_v = Cover.of(vertical).keep(0.5)
    assert keep_v.nonzero()[:, -1].tolist() == [20]
    mask = vertical_slash_stripes(keep_v, torch.zeros_like(keep_v), REGIONS)[0, 0]
    cand = REGIONS.stripe_candidates(N)
    assert torch.equal(mask, cand & (torch.arange(N) == 20))  # every group whose range holds key 20


def test_vertical_slash_planted_diagonal_gathers_its_keys_in_each_group():
    offset, freqs = 11, torch.arange(1, 17) * 2 * math.pi / N
    i = torch.arange(N)[:, None].float()
    q = torch.cat([torch.cos(freqs * i), torch.sin(freqs * i)], dim=1)[None, None] * 2
    k = torch.cat([torch.cos(freqs * (i + offset)), torch.sin(freqs * (i + offset))], dim=1)[None, None] * 2
    vertical, slash = vertical_slash_mass(q, k, 1.0, last=16)
    keep_s = Cover.of(slash).keep(0.3)
    assert keep_s.nonzero()[:, -1].tolist() == [offset]
    mask = vertical_slash_stripes(torch.zeros_like(keep_s), keep_s, REGIONS)[0, 0]
    for g in range(REGIONS.n_groups(N)):
        r0 = g * REGIONS.group
        on_slash = torch.zeros(N, dtype=torch.bool)
        on_slash[max(r0 - offset, 0): r0 + REGIONS.group - offset] = True  # rows r0 .. r0 + 7 minus 11
        assert torch.equal(mask[g], on_slash & REGIONS.stripe_candidates(N)[g])


def test_vertical_slash_index_gives_each_head_its_own_counts_at_the_matched_mean_density(one_thread):
    regions = StripeRegions(block_m=16, step=2, init=16)
    n = 512
    q, k = random_qk(heads=4, n=n, seed=3)
    q[:, 0] *= 4  # a sharper head: fewer verticals and slashes reach gamma
    vertical, slash = vertical_slash_mass(q, k, 0.25)
    counts = Cover.of(vertical).keep(0.9).sum(-1)[0]
    assert counts[0] < counts[1:].min()
    one_slash = regions.group * n  # a slash adds at most a group's rows of keys to every group
    for target in (0, 30_000, 200_000):
        index = vertical_slash_index(q, k, regions, 0.25, target)
        index.check(regions, n)
        assert abs(regions.stripe_pairs(index, n) - target) <= one_slash
