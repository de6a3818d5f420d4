"""AnchorAttention's pure-PyTorch path: limits of theta, the selection rule, shapes and GQA."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparsa.attention.anchor import anchor_attention, identify_reference, pooled_scores, row_scores, tile_means
from sparsa.attention.config import AnchorConfig
from sparsa.errors import SparsaError
from sparsa.kernels.reference_attention import anchors_reference, stripe_attention_reference

CONFIG = dict(block_m=8, step=2, init=8, window=0, backend="torch")


def qkv(batch, hq, hkv, n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, hq, n, d, generator=g), torch.randn(batch, hkv, n, d, generator=g),
            torch.randn(batch, hkv, n, d, generator=g))


# lengths: a multiple of the group (16), not a multiple, shorter than one group
@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("n", [64, 75, 11])
@pytest.mark.parametrize("ratio", [1, 3, 4, 8])
def test_anchor_theta_inf_equals_dense_causal(n, ratio, identify):
    q, k, v = qkv(2, ratio * 2 if ratio < 8 else 8, 2 if ratio < 8 else 1, n)
    r = anchor_attention(q, k, v, AnchorConfig(theta=math.inf, identify=identify, **CONFIG))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(r.o, ref, rtol=1e-5, atol=1e-5)
    scores = (q @ k.repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2)) / 4
    lse = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf).logsumexp(-1)
    torch.testing.assert_close(r.lse, lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("n", [64, 75, 11])
@pytest.mark.parametrize("window", [0, 12])
def test_anchor_theta_minus_inf_equals_init_plus_local(n, window, identify):
    q, k, v = qkv(2, 4, 2, n)
    config = AnchorConfig(theta=-math.inf, identify=identify, **{**CONFIG, "window": window})
    r = anchor_attention(q, k, v, config)
    assert r.index.nnz == 0
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    mask = (j <= i) & ((j < 8) | (j >= (i // 16 * 16 - window)))  # init 8, groups of 16 rows
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / 4
    ref = scores.masked_fill(~mask, -math.inf).softmax(-1) @ v.repeat_interleave(2, 1)
    torch.testing.assert_close(r.o, ref, rtol=1e-5, atol=1e-5)


def test_identify_rows_keeps_keys_some_row_of_the_group_wants():
    """Brute force: per (batch, head, group, key), any row of the group within theta of its own anchor."""
    q, k, _ = qkv(2, 4, 2, 75)
    regions, scale, theta = AnchorConfig(**CONFIG).regions, 0.25, 0.2
    anchors = anchors_reference(q, k, regions, scale)
    index = identify_reference(q, k, anchors, regions, theta, scale, "rows")
    index.check(regions, 75)
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * scale - anchors[..., None]  # [B, H, N, N]
    candidates = regions.stripe_candidates(75)
    expect = torch.zeros(2, 4, regions.n_groups(75), 75, dtype=torch.bool)
    for b, h, g, j in torch.cartesian_prod(*(torch.arange(x) for x in expect.shape)).tolist():
        rows = range(g * 16, min(g * 16 + 16, 75))
        expect[b, h, g, j] = bool(candidates[g, j]) and any(float(s[b, h, i, j]) >= -theta for i in rows)
    assert torch.equal(index.to_mask(75), expect)
    assert 0 < index.nnz < int(candidates.sum()) * 8  # the threshold bites


def test_row_scores_are_minus_inf_outside_the_stripe_range():
    q, k, _ = qkv(1, 2, 1, 75)
    regions = AnchorConfig(**CONFIG).regions
    s = row_scores(q, k, anchors_reference(q, k, regions, 0.25), regions, 0.25)
    candidates = regions.stripe_candidates(75).expand_as(s)
    assert torch.isfinite(s[candidates]).all() and (s[~candidates] == -math.inf).all()


def test_identify_pooled_keeps_exactly_keys_within_theta():
    q, k, _ = qkv(2, 4, 2, 75)
    config = AnchorConfig(theta=1.0, **CONFIG)
    regions, scale = config.regions, 0.25
    anchors = anchors_reference(q, k, regions, scale)
    index = identify_reference(q, k, anchors, regions, 1.0, scale, "pooled")
    index.check(regions, 75)
    # brute force: per group, per tile, per key
    kx = k.repeat_interleave(2, 1)
    expect = torch.zeros(2, 4, regions.n_groups(75), 75, dtype=torch.bool)
    for g in range(regions.n_groups(75)):
        for t in range(g * 2, min(g * 2 + 2, 10)):
            rows = slice(t * 8, min(t * 8 + 8, 75))
            s = q[:, :, rows].mean(2, keepdim=True) @ kx.transpose(-1, -2) * scale - anchors[:, :, rows].mean(-1)[..., None, None]
            expect[:, :, g] |= s[:, :, 0] >= -1.0
    expect &= regions.stripe_candidates(75)
    assert torch.equal(index.to_mask(75), expect)
    assert 0 < index.nnz < int(regions.stripe_candidates(75).sum()) * 8  # the threshold bites


def test_anchors_are_row_max_over_dense_region():
    q, k, _ = qkv(1, 2, 1, 40)
    regions = AnchorConfig(**CONFIG).regions
    a = anchors_reference(q, k, regions, 0.5)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.5
    torch.testing.assert_close(a, scores.masked_fill(~regions.dense_mask(40), -math.inf).amax(-1))


def test_tile_means_ragged_last_tile_divides_by_valid_rows():
    x = torch.arange(10.0).view(1, 1, 10)
    torch.testing.assert_close(tile_means(x, 4), torch.tensor([[[1.5, 5.5, 8.5]]]))


def test_pooled_scores_padding_tiles_never_win():
    q, k, _ = qkv(1, 1, 1, 20)
    regions = AnchorConfig(block_m=8, step=4, init=0).regions  # one group of 4 tiles, 3 exist
    s = pooled_scores(q, k, torch.zeros(1, 1, 20), regions, 1.0)
    assert torch.isfinite(s).all()


def test_stripe_attention_reference_lse_matches_logsumexp_of_kept_scores():
    q, k, v = qkv(1, 2, 2, 30)
    regions = AnchorConfig(**CONFIG).regions
    o, lse = stripe_attention_reference(q, k, v, regions, None, 0.25)
    scores = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~regions.dense_mask(30), -math.inf)
    torch.testing.assert_close(lse, scores.logsumexp(-1))


def test_anchor_attention_shape_mismatch_raises():
    q, k, v = qkv(1, 3, 2, 10)
    with pytest.raises(SparsaError, match="disagree"):
        anchor_attention(q, k, v)


@pytest.mark.parametrize("kwargs,match", [(dict(theta=math.nan), "theta"), (dict(backend="cuda"), "backend"),
                                          (dict(step=0), "step"), (dict(identify="mean"), "identify 'mean'")])
def test_anchor_config_bad_values_raise(kwargs, match):
    with pytest.raises(SparsaError, match=match):
        AnchorConfig(**kwargs)
