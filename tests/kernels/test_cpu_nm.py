"""The numba N:M kernel against the exact product and the dispatcher's choice of it."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.formats import NM
from sparsa.kernels import linear, linear_reference, select_linear_kernel
from sparsa.kernels.cpu.nm import nm_layout, nm_linear


def nm_weight(out: int, groups: int, n: int, m: int, g: torch.Generator) -> torch.Tensor:
    """A random [out, groups * m] weight with at most ``n`` nonzeros in every group of ``m`` (some fewer)."""
    W = torch.randn(out, groups, m, generator=g)
    keep = torch.rand(out, groups, m, generator=g).argsort(-1) < torch.randint(0, n + 1, (out, groups, 1), generator=g)
    return (W * keep).reshape(out, groups * m)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 5)]),
       st.integers(0, 20), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), st.booleans(),
       st.integers(0, 2**16))
def test_nm_linear_random_weights_match_the_exact_product(out, groups, nm, tokens, dtype, with_bias, seed):
    """Every pattern, value dtype and token count (0 included), ragged last units: within fp32
    rounding of the exact product of the stored values."""
    g = torch.Generator().manual_seed(seed)
    n, m = nm
    fmt = NM.from_dense(nm_weight(out, groups, n, m, g).to(dtype), n=n, m=m)
    x = torch.randn(tokens, groups * m, generator=g)
    bias = torch.randn(out, generator=g) if with_bias else None
    y = nm_linear(x, fmt, bias)
    W = fmt.to_dense(torch.float32).double()
    exact = x.double() @ W.T + (0 if bias is None else bias.double())
    bound = 1e-5 * (x.double().abs() @ W.abs().T) + 1e-6
    assert y.shape == (tokens, out) and y.dtype == torch.float32
    assert bool(((y.double() - exact).abs() <= bound).all())


def test_nm_layout_marks_every_slot_and_keeps_the_values_in_column_order():
    """Group 0 keeps columns 1 and 3; group 1 holds one nonzero (column 4) and a zero slot at the
    lowest free position (5): both are marked, so the values line up with the mask's bits."""
    W = torch.tensor([[0.0, 2.0, 0.0, 3.0, 5.0, 0.0, 0.0, 0.0]])
    lay = nm_layout(NM.from_dense(W, n=2, m=4))
    assert lay.words.tolist() == [[0b111010]] and lay.rowptr.tolist() == [0, 4]
    assert lay.values.tolist() == [2.0, 3.0, 5.0, 0.0]


def test_linear_dispatch_nm_on_cpu_runs_the_numba_kernel_and_matches_reference():
    g = torch.Generator().manual_seed(3)
    fmt = NM.from_dense(nm_weight(33, 6, 2, 4, g), n=2, m=4)
    x = torch.randn(2, 5, 24, generator=g)
    assert select_linear_kernel(fmt, x) is nm_linear
    torch.testing.assert_close(linear(x, fmt), linear_reference(x, fmt), rtol=1e-5, atol=1e-5)
