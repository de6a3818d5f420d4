"""Sparse bundle adjustment (Levenberg-Marquardt, Schur complement, PCG) and global positioning."""

from sparsa.sfm.ba import solve_ba
from sparsa.sfm.config import BAOptions, LMOptions
from sparsa.sfm.summary import BASummary

__all__ = ["BAOptions", "BASummary", "LMOptions", "solve_ba"]
