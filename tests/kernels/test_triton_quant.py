"""The Triton Quant kernel against the decoded weight: under ``TRITON_INTERPRET=1`` on the CPU
(fp32, fp16), on the GPU where there is one (fp16, bf16 too)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.quant import Quant
from sparsa.kernels.dispatch import LINEAR_KERNELS
from sparsa.kernels.triton.quant import quant_linear_triton
from triton_cases import DTYPES, check_kernel, needs_triton

pytestmark = needs_triton


@st.composite
def quant_case(draw):
    """2..8-bit codes whose stream positions cross bytes, groups that do not divide the row
    (a short last group), rows past one 64-row tile, 0..40 tokens, maybe a bias, min-max or
    symmetric grids."""
    bits, group_size = draw(st.integers(2, 8)), draw(st.sampled_from([7, 16, 32, 64]))
    out_features, in_features = draw(st.integers(1, 80)), draw(st.integers(1, 140))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    W = torch.randn(out_features, in_features, generator=g)
    x = torch.randn(draw(st.integers(0, 40)), in_features, generator=g)
    bias = torch.randn(out_features, generator=g) if draw(st.booleans()) else None
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size, symmetric=draw(st.booleans()))
    return fmt, x, bias, draw(st.sampled_from(DTYPES))


@settings(max_examples=25, deadline=None)
@given(quant_case())
def test_triton_quant_random_weights_match_decoded_weight(case):
    fmt, x, bias, dtype = case
    check_kernel(quant_linear_triton, fmt, fmt.to_dense(), x, bias, dtype)


@pytest.mark.parametrize("tokens", [1, 16, 17, 130])
def test_triton_quant_3_bit_token_tiles_and_leading_dims(tokens):
    g = torch.Generator().manual_seed(tokens)
    fmt = Quant.from_dense(torch.randn(100, 96, generator=g), bits=3, group_size=32)
    y = check_kernel(quant_linear_triton, fmt, fmt.to_dense(), torch.randn(2, tokens, 96, generator=g), None,
                     torch.float16)
    assert y.shape == (2, tokens, 100)


def test_triton_quant_filed_for_cuda_half_and_refuses_wrong_width():
    assert all(LINEAR_KERNELS[("quant", "cuda", d)].kernel is quant_linear_triton
               for d in (torch.float16, torch.bfloat16))
    with pytest.raises(SparsaError, match=r"activations \[\.\.\., 8\] do not match a 4x16 weight"):
        quant_linear_triton(torch.zeros(2, 8), Quant.from_dense(torch.randn(4, 16), bits=4, group_size=16))
