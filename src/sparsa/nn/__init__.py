"""Wiring formats into models: SparseLinear, model surgery, checkpoints, the model registry."""

from sparsa.nn.sparse_linear import SparseLinear, decoded_weights
from sparsa.nn.surgery import decoder_linears, linear_footprint, set_submodule, sparse_linears, target_linears

__all__ = ["SparseLinear", "decoded_weights", "decoder_linears", "linear_footprint", "set_submodule", "sparse_linears", "target_linears"]
