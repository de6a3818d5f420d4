"""Compression engine: one entry point, ``compress_(model, config)``, over registered methods."""

from sparsa.compress import magnitude, rtn  # noqa: F401  (register the methods)
from sparsa.compress.api import CompressSummary, compress_
from sparsa.compress.config import MagnitudeConfig, MethodConfig, RTNConfig, parse_pattern
from sparsa.compress.registry import METHODS, get_method

__all__ = ["METHODS", "CompressSummary", "MagnitudeConfig", "MethodConfig", "RTNConfig", "compress_",
           "get_method", "parse_pattern"]
