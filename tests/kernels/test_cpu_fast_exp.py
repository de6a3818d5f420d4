"""The vectorizable fp32 ``exp`` of the decode step against ``np.exp``."""

import numba
import numpy as np
from hypothesis import given, strategies as st

from sparsa.kernels.cpu.fast_exp import HIGH, LOW, exp32

ULP_BOUND = 8e-7  # a few fp32 ulp (2^-23 = 1.2e-7): 3.1e-7 measured over [-87, 88]


@numba.njit(fastmath=True)
def exps(x, out):
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])


def test_exp32_is_within_a_few_ulp_over_its_range():
    x = np.linspace(LOW, HIGH, 2_000_001, dtype=np.float32)
    out = np.empty_like(x)
    exps(x, out)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < ULP_BOUND


@given(st.floats(-200, 200, width=32))
def test_exp32_clamps_outside_its_range_and_matches_inside(value):
    out = np.empty(1, np.float32)
    exps(np.array([value], np.float32), out)
    clamped = float(np.clip(np.float32(value), LOW, HIGH))
    assert np.isfinite(out[0]) and out[0] > 0
    assert abs(out[0] - np.exp(clamped)) <= ULP_BOUND * np.exp(clamped)
