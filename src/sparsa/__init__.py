"""sparsa: make models and solvers sparse, small and fast on CPU and GPU."""

__version__ = "0.1.0"
