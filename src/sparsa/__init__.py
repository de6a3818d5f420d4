"""sparsa: make models and solvers sparse, small and fast on CPU and GPU."""

__version__ = "0.1.0"

from sparsa.openmp import spin_before_sleeping

spin_before_sleeping()  # before torch or numba loads an OpenMP runtime

from sparsa.import_noise import quiet_import_noise  # noqa: E402

quiet_import_noise()
