"""The compiled decode step's schedule: each rows phase's chunks cover its products' units exactly once."""

import numpy as np
from hypothesis import given, settings, strategies as st

from sparsa.kernels.cpu.llama_step import PRODUCTS_PER_LAYER, ROWS_PHASES, Schedule


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.data())
def test_schedule_chunks_cover_every_unit_once_in_phase_order(layers, threads, data):
    units = np.array(data.draw(st.lists(st.integers(1, 400), min_size=PRODUCTS_PER_LAYER * layers + 1,
                                        max_size=PRODUCTS_PER_LAYER * layers + 1)), np.int64)
    schedule = Schedule.of(units, threads)
    phases = [[PRODUCTS_PER_LAYER * i + j for j in group] for i in range(layers) for group in ROWS_PHASES]
    phases.append([len(units) - 1])
    assert len(schedule.starts) == len(phases) + 1 and schedule.starts[0] == 0
    assert schedule.starts[-1] == len(schedule.product)
    for r, members in enumerate(phases):
        chunks = range(schedule.starts[r], schedule.starts[r + 1])
        assert {int(schedule.product[c]) for c in chunks} == set(members)
        for p in members:
            covered = np.zeros(units[p], np.int64)
            for c in chunks:
                if schedule.product[c] == p:
                    assert schedule.first[c] < schedule.last[c]
                    covered[schedule.first[c]:schedule.last[c]] += 1
            assert (covered == 1).all()
