"""Tests for sparsa.compress.rtn: the round-to-nearest method wraps Quant.from_dense."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.compress.config import RTNConfig
from sparsa.compress.registry import METHODS, get_method
from sparsa.compress.rtn import rtn
from sparsa.errors import SparsaError
from sparsa.formats.quant import Quant

FAST = settings(max_examples=30, deadline=None)


def test_rtn_method_is_registered_with_its_config():
    method = get_method("rtn")
    assert METHODS["rtn"] is method
    assert method.name == "rtn" and method.config_cls is RTNConfig and method.compress_weight is rtn


@FAST
@given(st.integers(2, 8), st.sampled_from([1, 4, 8, 16]), st.integers(1, 4), st.integers(1, 4),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_rtn_any_weight_equals_quant_from_dense(bits, group_size, groups, out, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, groups * group_size, generator=g).to(dtype)
    fmt = rtn(W, RTNConfig(bits=bits, group_size=group_size), where="layer")
    expected = Quant.from_dense(W, bits=bits, group_size=group_size)
    assert isinstance(fmt, Quant) and fmt.meta() == expected.meta()
    for name in Quant.ARRAYS:
        assert torch.equal(getattr(fmt, name), getattr(expected, name))


@FAST
@given(st.integers(2, 8), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_rtn_any_weight_error_at_most_half_step_plus_fp16_rounding(bits, out, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, 32, generator=g)
    fmt = rtn(W, RTNConfig(bits=bits, group_size=16), where="layer")
    err = (fmt.to_dense() - W).abs().view(out, 2, 16)
    # scale/2 from rounding; 2**-9 relative slack covers the fp16 minimum and scale rounding
    tol = fmt.scale.float() / 2 + 2.0**-9 * W.abs().max()
    assert bool((err <= tol[..., None]).all())


def test_rtn_more_bits_reduce_error():
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    errors = [(rtn(W, RTNConfig(bits=b, group_size=32), where="w").to_dense() - W).abs().max() for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]


def test_rtn_group_size_wider_than_row_is_one_group_per_row():
    W = torch.randn(4, 96)
    wide, exact = rtn(W, RTNConfig(bits=4, group_size=128), where="w"), rtn(W, RTNConfig(bits=4, group_size=96), where="w")
    assert torch.equal(wide.to_dense(), exact.to_dense()) and wide.scale.shape == (4, 1)
