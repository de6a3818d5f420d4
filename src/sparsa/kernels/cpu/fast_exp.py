"""``exp`` for fp32 in a form LLVM vectorizes (numba): the decode step's SiLU and softmax.

numba lowers ``np.exp`` on fp32 to a scalar ``expf`` call per element (no vector math library
here), some 3-5 ns each; with numba's Python-style division check it kept the SiLU of
SmolLM2's 1536-wide MLP scalar, 7.7 us a layer (under 1 us now). This is the textbook range
reduction instead::

    exp(x) = 2^n * e^r,   n = round(x log2 e),  r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]

with ``r`` formed against ln 2 split in two (Cody and Waite: ``n ln2_hi`` is exact), ``e^r`` a
degree-7 Taylor polynomial (truncation below 1e-8, so a few fp32 ulp in all) and ``2^n``
built from its exponent bits (as bf16 bits
widened to fp32: :func:`sparsa.kernels.cpu.dense.widen`). ``x`` is clamped to [-87, 88]:
below, the result is about 1e-38 instead of a denormal or zero; above, about 1.7e38 instead
of inf. The reference is ``np.exp``.
"""

import numba
import numpy as np

from sparsa.kernels.cpu.dense import widen

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)  # 15 significant bits: n * LN2_HI is exact for |n| < 2^9
LN2_LO = np.float32(0.6931471805599453 - 0.693145751953125)
C2, C3, C4, C5, C6, C7 = (np.float32(1 / f) for f in (2, 6, 24, 120, 720, 5040))  # e^r = sum r^k / k!
LOW, HIGH = np.float32(-87.0), np.float32(88.0)


@numba.njit(fastmath=True, inline="always")
def exp32(x):  # pragma: no cover - compiled
    """e^x for an fp32 ``x`` (finite; see the module docstring for the clamped range)."""
    x = min(max(x, LOW), HIGH)
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = (x - n * LN2_HI) - n * LN2_LO
    p = np.float32(1.0) + r * (np.float32(1.0) + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))))
    return p * widen(np.int16((np.int32(n) + 127) << 7))
