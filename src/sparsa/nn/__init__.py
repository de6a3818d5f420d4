"""Wiring formats into models: SparseLinear, model surgery, checkpoints, the model registry."""

from sparsa.nn.sparse_linear import SparseLinear, decoded_weights
from sparsa.nn.surgery import all_linears, decoder_linears, linear_footprint, set_submodule, sparse_linears, target_linears

__all__ = ["SparseLinear", "all_linears", "decoded_weights", "decoder_linears", "linear_footprint", "set_submodule", "sparse_linears", "target_linears"]
