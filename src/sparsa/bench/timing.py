"""The one timer of every benchmark: calls timed on the CPU or CUDA, candidates in round-robin
rounds, medians.

Every peer of a comparison runs under these same functions: the same warm-up, the same clock
(``time.perf_counter``, or ``triton.testing.do_bench``'s CUDA events on the GPU) and the same
statistic.
"""

import statistics
import time
from collections.abc import Callable, Mapping

import torch

Timer = Callable[[Callable[[], object]], float]  # fn -> ms per call


def time_call(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call on the CPU: one warm-up call, then repeat until ``min_seconds`` have passed;
    the mean of that batch."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[object, float]:
    """``(fn(), seconds)`` of one call; on CUDA the device is synchronized before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def cuda_timer(rep_ms: int, warmup: int = 10) -> Timer:
    """ms per call on CUDA: the median of ``triton.testing.do_bench`` over about ``rep_ms`` of calls,
    after ``warmup`` ms of warm-up."""
    from triton.testing import do_bench

    return lambda fn: float(do_bench(fn, warmup=warmup, rep=rep_ms, return_mode="median"))


def round_robin(measure: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each candidate's ``measure()`` once per round, in order, for ``rounds`` rounds: name -> the samples."""
    samples = {name: [] for name in measure}
    for _ in range(rounds):
        for name, fn in measure.items():
            samples[name].append(fn())
    return samples


def median(xs) -> float:
    """The median (the mean of the middle two for an even count)."""
    return float(statistics.median(xs))
