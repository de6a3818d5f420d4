"""The Triton N:M kernel against the decoded weight: under ``TRITON_INTERPRET=1`` on the CPU
(fp32, fp16), on the GPU where there is one (fp16, bf16 too)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.formats.nm import NM
from sparsa.kernels.dispatch import LINEAR_KERNELS
from sparsa.kernels.triton.nm import nm_linear_triton
from triton_cases import DTYPES, check_kernel, needs_triton

pytestmark = needs_triton


@st.composite
def nm_case(draw):
    """N:M from 1:1 to 3:8 (2:4 most often), groups with fewer than N nonzeros, rows past one
    64-row tile, 0..40 tokens, fp32/fp16 slot values, maybe a bias."""
    n, m = draw(st.sampled_from([(2, 4), (2, 4), (1, 4), (1, 1), (3, 8), (4, 8)]))
    out_features, groups = draw(st.integers(1, 80)), draw(st.integers(1, 20))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    W = torch.randn(out_features, groups, m, generator=g)
    keep = torch.rand(out_features, groups, m, generator=g).argsort(-1) < draw(st.integers(0, n))
    W = (W * keep).reshape(out_features, groups * m).to(draw(st.sampled_from([torch.float32, torch.float16])))
    x = torch.randn(draw(st.integers(0, 40)), groups * m, generator=g)
    bias = torch.randn(out_features, generator=g) if draw(st.booleans()) else None
    return NM.from_dense(W, n=n, m=m), x, bias, draw(st.sampled_from(DTYPES))


@settings(max_examples=25, deadline=None)
@given(nm_case())
def test_triton_nm_random_weights_match_decoded_weight(case):
    fmt, x, bias, dtype = case
    check_kernel(nm_linear_triton, fmt, fmt.to_dense(torch.float32), x, bias, dtype)


def test_triton_nm_filed_for_cuda_half():
    assert all(LINEAR_KERNELS[("nm", "cuda", d)].kernel is nm_linear_triton for d in (torch.float16, torch.bfloat16))
