"""The step's atomic counters: every task of every phase runs once, phases in order, on any thread count."""

import numba
import numpy as np
import pytest

from sparsa.kernels.cpu.atomics import take, wait_for


@numba.njit
def walk(counts, tasks, runs):  # pragma: no cover - compiled
    """Phases ``p`` of ``tasks[p]`` tasks: each taken task counts its run, plus 1000 unless every task of
    the phase before had finished."""
    for p in range(tasks.shape[0]):
        while True:
            t = take(counts, 2 * p)
            if t >= tasks[p]:
                break
            runs[p, t] += 1
            if p and counts[2 * p - 1] != tasks[p - 1]:
                runs[p, t] += 1000
            take(counts, 2 * p + 1)
        wait_for(counts, 2 * p + 1, tasks[p])


@numba.njit(parallel=True)
def region(tasks, runs, threads):  # pragma: no cover - compiled
    counts = np.zeros(2 * tasks.shape[0], np.int64)
    for _ in numba.prange(threads):
        walk(counts, tasks, runs)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_task_runs_once_after_the_phase_before_it(threads):
    rng = np.random.default_rng(threads)
    tasks = rng.integers(1, 9, 200).astype(np.int64)
    runs = np.zeros((200, 8), np.int64)
    region(tasks, runs, threads)
    expected = (np.arange(8)[None] < tasks[:, None]).astype(np.int64)
    np.testing.assert_array_equal(runs, expected)
