"""How long an idle OpenMP worker spins before it sleeps, set before any OpenMP runtime loads.

numba's parallel regions run on GNU libgomp (its ``omp`` threading layer). Between two regions
a worker spins for a while, then sleeps on a futex; waking it costs microseconds. libgomp's
default spin is short here: an empty region called from compiled code took 2.8 us, against
1.2 us with ``GOMP_SPINCOUNT=30000`` (about 10-30 us of spinning; the same from 30,000 to
1,000,000), on the 2-core EPYC of the bench. Kernels called one by one (prefill, the bound
products) run one region each. Workers still sleep once a
process stops issuing regions (for example between tokens, in Python). A user's own
``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` wins.
"""

import os

SPIN_COUNT = "30000"


def spin_before_sleeping() -> None:
    """Set ``GOMP_SPINCOUNT`` unless the user set it or ``OMP_WAIT_POLICY`` (read when libgomp loads)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
