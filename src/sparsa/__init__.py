"""sparsa: make models and solvers sparse, small and fast on CPU and GPU."""

__version__ = "0.1.0"

from sparsa.import_noise import quiet_import_noise

quiet_import_noise()
