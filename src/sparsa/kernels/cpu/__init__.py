"""CPU kernels (numba, multi-threaded and vectorized), each tested against ``kernels.reference``.

Importing this package files them in the dispatch table."""

from sparsa.kernels.cpu import block_int8, block_sparse, spqr  # noqa: F401
