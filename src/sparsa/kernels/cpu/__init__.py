"""CPU kernels (numba, multi-threaded and vectorized), each tested against ``kernels.reference``.

Importing this package files them in the dispatch table. It first asks LLVM for full-width
AVX-512 vectors: LLVM tunes Intel AVX-512 CPUs to prefer 256-bit vectors ("prefer-256-bit"),
which halves the fp32 lanes of loops written for 16; the fp32 block kernel measured 1.4x
faster without it (3072x768 at 128 tokens, 90% sparse, 2026-11-22). A ``NUMBA_CPU_FEATURES``
set by the user is left alone, and so is a process where numba has already compiled.
"""

import llvmlite.binding as llvm
import numba


def prefer_full_width_vectors() -> None:
    """Drop LLVM's 256-bit preference on AVX-512 hosts (process-wide numba setting)."""
    features = llvm.get_host_cpu_features()
    if numba.config.CPU_FEATURES is None and features.get("avx512f", False):
        numba.config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"


prefer_full_width_vectors()

from sparsa.kernels.cpu import bitmap, block_int8, block_sparse, nm, quant, spqr  # noqa: E402,F401
