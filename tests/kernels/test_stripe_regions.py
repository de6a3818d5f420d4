"""Index math of the stripe regions: dense and stripe key sets, pair counts, the CSR round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions

geometries = st.builds(StripeRegions, block_m=st.integers(1, 8), step=st.integers(1, 4), init=st.integers(0, 20),
                       window=st.integers(0, 20))


@settings(max_examples=60, deadline=None)
@given(regions=geometries, n=st.integers(1, 70))
def test_regions_dense_and_stripes_partition_causal_keys(regions, n):
    dense = regions.dense_mask(n)
    groups = torch.arange(n) // regions.group
    stripes = regions.stripe_candidates(n)[groups]  # [n, n]: the row's group's candidates
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    assert not (dense & stripes).any()  # no key counted twice
    assert torch.equal(dense | stripes, causal)  # no key range skipped
    assert regions.dense_pairs(n) == int(dense.sum())


@settings(max_examples=60, deadline=None)
@given(regions=geometries, n=st.integers(1, 70), batch=st.integers(1, 2), heads=st.integers(1, 3),
       seed=st.integers(0, 10**6))
def test_stripe_index_mask_round_trip_exact(regions, n, batch, heads, seed):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, heads, regions.n_groups(n), n, generator=g) < 0.4) & regions.stripe_candidates(n)
    index = StripeIndex.from_mask(mask)
    index.check(regions, n)
    assert torch.equal(index.to_mask(n), mask)
    assert index.nnz == int(mask.sum()) and torch.equal(index.counts(), mask.sum(-1))
    rows = torch.full((index.groups,), regions.group)
    rows[-1] = n - (index.groups - 1) * regions.group
    assert regions.stripe_pairs(index, n) == int((mask.sum(-1) * rows).sum())


def test_stripe_index_check_key_outside_range_raises():
    regions = StripeRegions(block_m=4, step=1, init=2)
    mask = torch.zeros(1, 1, regions.n_groups(16), 16, dtype=torch.bool)
    mask[0, 0, 2, 9] = True  # group 2 may gather [2, 8) only
    with pytest.raises(SparsaError, match="outside its group's stripe range"):
        StripeIndex.from_mask(mask).check(regions, 16)


def test_stripe_index_check_unsorted_row_raises():
    regions = StripeRegions(block_m=4, step=1, init=0)
    index = StripeIndex(torch.tensor([0, 0, 0, 2, 2]), torch.tensor([5, 3], dtype=torch.int32), 1, 1, 4)
    with pytest.raises(SparsaError, match="not strictly increasing"):
        index.check(regions, 16)


@pytest.mark.parametrize("field,value", [("block_m", 0), ("step", 0), ("init", -1)])
def test_regions_bad_geometry_raises(field, value):
    with pytest.raises(SparsaError, match=field):
        StripeRegions(**{field: value})
