"""Compression engine: one entry point, ``compress_(model, config)``, over registered methods."""

from sparsa.compress import auto, gptq, magnitude, rtn, sparsegpt, spqr, wanda  # noqa: F401  (register the methods)
from sparsa.compress.api import CompressSummary, compress_
from sparsa.compress.config import (AutoConfig, GPTQConfig, MagnitudeConfig, MethodConfig, RTNConfig, SparseGPTConfig,
                                    SpQRConfig, WandaConfig, parse_pattern)
from sparsa.compress.registry import METHODS, get_method

__all__ = ["METHODS", "AutoConfig", "CompressSummary", "GPTQConfig", "MagnitudeConfig", "SpQRConfig", "SparseGPTConfig", "WandaConfig", "MethodConfig", "RTNConfig", "compress_",
           "get_method", "parse_pattern"]
