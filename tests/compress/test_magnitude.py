"""Property tests for sparsa.compress.magnitude: exact kept counts, largest magnitudes kept."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.compress.config import MagnitudeConfig
from sparsa.compress.magnitude import keep_count, magnitude, prune_blocks, prune_nm, prune_unstructured
from sparsa.compress.registry import get_method
from sparsa.errors import SparsaError
from sparsa.formats import NM, Bitmap, BlockSparse

FAST = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dense_weight(seed: int, out: int, inp: int, dtype=torch.float32) -> torch.Tensor:
    """[out, in] weight with no zeros and distinct magnitudes (no ties at the pruning threshold)."""
    g = torch.Generator().manual_seed(seed)
    magnitudes = (torch.randperm(out * inp, generator=g).float() + 1) / 8  # exact in bf16 up to 256 values
    signs = torch.where(torch.rand(out * inp, generator=g) < 0.5, -1.0, 1.0)
    return (magnitudes * signs).view(out, inp).to(dtype)


def test_magnitude_method_is_registered_with_its_config_and_url():
    method = get_method("magnitude")
    assert method.config_cls is MagnitudeConfig and method.compress_weight is magnitude
    assert method.reference_url == "https://arxiv.org/abs/1506.02626"


@pytest.mark.parametrize("total, sparsity, kept", [(10, 0.5, 5), (10, 0.0, 10), (10, 0.99, 0), (7, 0.5, 3),
                                                   (5, 0.5, 3), (3, 0.5, 1), (100, 0.25, 75)])
def test_keep_count_total_and_sparsity_gives_rounded_survivors(total, sparsity, kept):
    assert keep_count(total, sparsity) == kept


# -- unstructured ---------------------------------------------------------------------------

@FAST
@given(st.integers(1, 8), st.integers(1, 16), st.floats(0, 0.999), st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))
def test_magnitude_unstructured_any_sparsity_keeps_exact_count_of_largest(out, inp, sparsity, dtype, seed):
    W = dense_weight(seed, out, inp, dtype)
    fmt = magnitude(W, MagnitudeConfig(sparsity=sparsity), where="w")
    assert isinstance(fmt, Bitmap) and fmt.values.dtype == dtype
    dense = fmt.to_dense()
    kept = dense != 0
    total = out * inp
    assert int(kept.sum()) == total - round(total * sparsity)
    assert torch.equal(dense, W * kept)  # kept values are unchanged
    if 0 < int(kept.sum()) < total:
        assert W.abs()[kept].min() >= W.abs()[~kept].max()


@FAST
@given(st.integers(1, 6), st.integers(1, 12), st.floats(0, 0.999), st.integers(0, 2**31 - 1))
def test_prune_unstructured_any_sparsity_mask_keeps_exact_count(out, inp, sparsity, seed):
    W = dense_weight(seed, out, inp)
    mask = prune_unstructured(W, sparsity)
    assert mask.dtype == torch.bool and mask.shape == W.shape
    assert int(mask.sum()) == keep_count(W.numel(), sparsity)


def test_magnitude_unstructured_zero_sparsity_keeps_everything():
    W = dense_weight(0, 3, 5)
    assert torch.equal(magnitude(W, MagnitudeConfig(sparsity=0.0), where="w").to_dense(), W)


def test_magnitude_unstructured_known_weight_keeps_largest_half():
    W = torch.tensor([[0.1, -4.0, 0.3, 2.0], [-0.2, 1.0, -3.0, 0.4]])
    fmt = magnitude(W, MagnitudeConfig(), where="w")
    assert fmt.to_dense().tolist() == [[0.0, -4.0, 0.0, 2.0], [0.0, 1.0, -3.0, 0.0]]


# -- N:M ------------------------------------------------------------------------------------

@st.composite
def nm_pattern(draw):
    m = draw(st.sampled_from([2, 3, 4, 8, 16]))
    n = draw(st.integers(1, m - 1))
    return n, m


@FAST
@given(nm_pattern(), st.integers(1, 5), st.integers(1, 4), st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))
def test_magnitude_nm_dense_weight_keeps_exactly_n_largest_per_group(pattern, out, groups, dtype, seed):
    n, m = pattern
    W = dense_weight(seed, out, groups * m, dtype)
    fmt = magnitude(W, MagnitudeConfig(pattern=f"{n}:{m}"), where="w")
    assert isinstance(fmt, NM) and (fmt.n, fmt.m) == (n, m) and fmt.values.dtype == dtype
    dense = fmt.to_dense()
    assert torch.equal(dense, W * (dense != 0))
    kept = (dense != 0).view(out, groups, m)
    assert bool((kept.sum(-1) == n).all())
    mags = W.abs().view(out, groups, m)
    min_kept = torch.where(kept, mags, torch.full_like(mags, float("inf"))).amin(-1)
    max_dropped = torch.where(kept, torch.zeros_like(mags), mags).amax(-1)
    assert bool((min_kept >= max_dropped).all())


@FAST
@given(nm_pattern(), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_prune_nm_any_weight_mask_has_n_per_group(pattern, out, groups, seed):
    n, m = pattern
    mask = prune_nm(dense_weight(seed, out, groups * m), n, m)
    assert mask.shape == (out, groups * m)
    assert bool((mask.view(out, groups, m).sum(-1) == n).all())


def test_magnitude_nm_weight_with_zeros_keeps_at_most_n_per_group():
    W = torch.tensor([[0.0, 0.0, 0.0, 1.0, 5.0, -6.0, 0.0, 7.0]])
    fmt = magnitude(W, MagnitudeConfig(pattern="2:4"), where="w")
    assert fmt.to_dense().tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0, -6.0, 0.0, 7.0]]


def test_magnitude_nm_in_features_not_multiple_of_m_raises():
    with pytest.raises(SparsaError, match=re.escape("model.fc: in_features=6 is not a multiple of M=4")):
        magnitude(torch.ones(2, 6), MagnitudeConfig(pattern="2:4"), where="model.fc")


# -- block ----------------------------------------------------------------------------------

@st.composite
def block_case(draw):
    r, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    R, C = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (r, c), (R, C)


@FAST
@given(block_case(), st.floats(0, 0.999), st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))
def test_magnitude_block_any_sparsity_keeps_exact_count_of_largest_blocks(case, sparsity, dtype, seed):
    (r, c), (R, C) = case
    W = dense_weight(seed, R * r, C * c, dtype)
    fmt = magnitude(W, MagnitudeConfig(sparsity=sparsity, pattern=f"block:{r}x{c}"), where="w")
    assert isinstance(fmt, BlockSparse) and fmt.block == (r, c) and fmt.values.dtype == dtype
    nnzb = keep_count(R * C, sparsity)
    assert fmt.col.numel() == nnzb
    dense = fmt.to_dense()
    assert torch.equal(dense, W * (dense != 0))
    kept = (dense != 0).view(R, r, C, c)
    assert bool((kept.all(dim=(1, 3)) | ~kept.any(dim=(1, 3))).all())  # whole blocks only
    kept_blocks = kept.any(dim=(1, 3)).reshape(-1)
    norms = W.float().view(R, r, C, c).square().sum(dim=(1, 3)).reshape(-1)
    if 0 < nnzb < R * C:
        assert norms[kept_blocks].min() >= norms[~kept_blocks].max()


@FAST
@given(block_case(), st.floats(0, 0.999), st.integers(0, 2**31 - 1))
def test_prune_blocks_any_sparsity_mask_covers_whole_blocks(case, sparsity, seed):
    (r, c), (R, C) = case
    mask = prune_blocks(dense_weight(seed, R * r, C * c), (r, c), sparsity)
    assert mask.shape == (R * r, C * c)
    assert int(mask.sum()) == keep_count(R * C, sparsity) * r * c


def test_magnitude_block_known_weight_keeps_largest_norm_block():
    W = torch.tensor([[1.0, 1.0, 0.5, 3.0], [1.0, 1.0, 0.25, 0.5]])  # block norms^2: 4.0 vs 9.5625
    fmt = magnitude(W, MagnitudeConfig(sparsity=0.5, pattern="block:2x2"), where="w")
    assert fmt.to_dense().tolist() == [[0.0, 0.0, 0.5, 3.0], [0.0, 0.0, 0.25, 0.5]]


def test_magnitude_block_not_tiling_raises():
    with pytest.raises(SparsaError, match=re.escape("model.fc: weight 4x10 is not tiled by 1x16 blocks")):
        magnitude(torch.ones(4, 10), MagnitudeConfig(pattern="block:1x16"), where="model.fc")
