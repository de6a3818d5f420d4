"""Weighted grid search for symmetric and asymmetric grids: never worse than the plain rule in the
weighted error it minimizes, usually better, and on the plain rule's grid when every weight is zero."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.compress.grid_search import weighted_asymmetric_stats, weighted_symmetric_stats
from sparsa.formats.quant import absmax_stats, minmax_stats, symmetric_minimum, symmetric_stats


def weighted_error(Wg, h, scale, bits):
    nmax = 2 ** (bits - 1)
    s = scale.float()[..., None]
    q = torch.where(s != 0, Wg / torch.where(s != 0, s, torch.ones_like(s)), 0).round().clamp(-nmax, nmax - 1)
    return (h[None] * (Wg - s * q) ** 2).sum(-1)


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([4, 5, 8]), absmax=st.booleans(), seed=st.integers(0, 2**31))
def test_search_is_never_worse_than_the_plain_rule(bits, absmax, seed):
    g = torch.Generator().manual_seed(seed)
    Wg = torch.randn(6, 3, 32, generator=g) * 0.02
    h = torch.rand(3, 32, generator=g) ** 4 * 10  # skewed importances
    scale, minimum = weighted_symmetric_stats(Wg, h, bits, absmax)
    plain, _ = absmax_stats(Wg, bits) if absmax else symmetric_stats(Wg, bits)
    assert scale.dtype == torch.float16 and torch.equal(minimum, symmetric_minimum(scale, bits))
    assert bool((weighted_error(Wg, h, scale, bits) <= weighted_error(Wg, h, plain, bits)).all())


def test_search_lowers_the_weighted_error_on_skewed_importances():
    g = torch.Generator().manual_seed(0)
    Wg = torch.randn(64, 4, 32, generator=g)
    h = torch.ones(4, 32)
    h[:, :4] = 100.0
    scale, _ = weighted_symmetric_stats(Wg, h, 4)
    plain, _ = symmetric_stats(Wg, 4)
    assert weighted_error(Wg, h, scale, 4).sum() < 0.8 * weighted_error(Wg, h, plain, 4).sum()


def test_all_zero_groups_keep_a_zero_scale():
    scale, minimum = weighted_symmetric_stats(torch.zeros(2, 1, 32), torch.ones(1, 32), 4)
    assert not scale.any() and not minimum.any()


def test_gptq_without_error_feedback_is_rtn_on_its_grid():
    from sparsa.compress import GPTQConfig
    from sparsa.compress.gptq import gptq_solve
    from sparsa.formats.quant import Quant, grid_codes, pad_groups

    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=g)
    X = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 3, 64)
    H = 2 * X.T @ X / len(X)
    plain, _, _ = gptq_solve(W, H, GPTQConfig(bits=4, group_size=32, act_order=False, error_feedback=False), where="w")
    rtn = Quant.from_dense(W, bits=4, group_size=32)
    assert all(torch.equal(getattr(plain, k), v) for k, v in rtn.arrays().items())
    searched, _, _ = gptq_solve(W, H, GPTQConfig(grid="q4_0", error_feedback=False), where="w")
    scale, minimum = weighted_symmetric_stats(pad_groups(W, 32), pad_groups(torch.diag(H)[None], 32)[0], 4)
    codes = grid_codes(pad_groups(W, 32), scale[..., None], minimum[..., None], 4).reshape(16, 64)
    assert torch.equal(searched.scale, scale) and torch.equal(searched.unpacked_codes(), codes.to(torch.uint8))


def asymmetric_error(Wg, h, scale, minimum, bits):
    s, m = scale.float()[..., None], minimum.float()[..., None]
    q = torch.where(s > 0, (Wg - m) / torch.where(s > 0, s, torch.ones_like(s)), 0).round().clamp(0, 2**bits - 1)
    return (h[None] * (Wg - s * q - m) ** 2).sum(-1)


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([4, 5]), clip=st.booleans(), seed=st.integers(0, 2**31))
def test_asymmetric_search_is_never_worse_than_min_max(bits, clip, seed):
    g = torch.Generator().manual_seed(seed)
    Wg = torch.randn(6, 3, 32, generator=g) * 0.02 + (0.01 if clip else 0)  # some groups all positive
    h = torch.rand(3, 32, generator=g) ** 4 * 10
    scale, minimum = weighted_asymmetric_stats(Wg, h, bits, clip_minimum=clip)
    low = Wg.amin(-1).clamp(max=0) if clip else Wg.amin(-1)
    plain = (((Wg.amax(-1) - low) / (2**bits - 1)).half(), low.half())
    if not clip:
        assert all(torch.equal(a, b) for a, b in zip(plain, minmax_stats(Wg, bits)))
    assert scale.dtype == torch.float16 and bool((scale >= 0).all()) and (not clip or bool((minimum <= 0).all()))
    assert bool((asymmetric_error(Wg, h, scale, minimum, bits) <= asymmetric_error(Wg, h, *plain, bits)).all())


def test_asymmetric_search_lowers_the_weighted_error_on_skewed_importances():
    g = torch.Generator().manual_seed(0)
    Wg = torch.randn(64, 4, 32, generator=g)
    h = torch.ones(4, 32)
    h[:, :4] = 100.0
    scale, minimum = weighted_asymmetric_stats(Wg, h, 4, dtype=torch.float32)
    assert scale.dtype == torch.float32
    plain = minmax_stats(Wg, 4)
    assert asymmetric_error(Wg, h, scale, minimum, 4).sum() < 0.8 * asymmetric_error(Wg, h, *plain, 4).sum()
