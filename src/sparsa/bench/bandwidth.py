"""A STREAM-like read bandwidth, measured in the benchmark's own process: the denominator of
``bench decode``'s byte floor (the bytes a decode step reads / this rate).

Each of ``threads`` tasks sums its contiguous share of a buffer far larger than the last-level
cache into 32 partial sums (two cache lines' worth, so the adds never wait on each other and
the loop is bound by memory, not latency), as STREAM's read-only kernels are. The best of
``repeats`` passes is reported (STREAM's convention): a floor from the fastest rate the machine
showed is the strictest one. One thread reads about 13 GB/s this way where numpy's sum reads
23 on the bench's EPYC, so ``bench decode`` takes the floor at its first (largest) thread count
only, where this reads what llama.cpp's F32 decode implies (26-27 GB/s on 2 threads).
"""

import time

import numba
import numpy as np

STRIDE = 32  # partial sums per task (fp32): two vector chains


@numba.njit(fastmath=True)
def _sum_span(a, lo, hi):  # pragma: no cover - compiled
    partial = np.zeros(STRIDE, np.float32)
    for i in range(lo, hi, STRIDE):
        for lane in range(STRIDE):
            partial[lane] += a[i + lane]
    return partial.sum()


@numba.njit(parallel=True)
def _read_all(a, tasks):  # pragma: no cover - compiled
    per_task = a.shape[0] // tasks // STRIDE * STRIDE
    sums = np.zeros(tasks)
    for task in numba.prange(tasks):
        sums[task] = _sum_span(a, task * per_task, (task + 1) * per_task)
    return sums.sum()


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth in GB/s (1e9 bytes) with ``threads`` numba threads, best of ``repeats`` passes
    over a ``megabytes`` buffer (the caller sets the thread count: :func:`sparsa.bench.decode.thread_count`)."""
    buffer = np.ones(megabytes * 2**20 // 4 // (STRIDE * threads) * STRIDE * threads, np.float32)
    _read_all(buffer, threads)  # compile, and fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _read_all(buffer, threads)
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9
