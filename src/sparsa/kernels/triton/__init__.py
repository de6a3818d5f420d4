"""GPU kernels (Triton), each tested against ``kernels.reference`` under ``TRITON_INTERPRET=1``
on the CPU (fp32/fp16; the interpreter computes bf16 wrongly, so bf16 is tested on a GPU only).

Importing this package files them in the dispatch table for CUDA activations.
"""

from sparsa.kernels.triton import block_sparse, nm, quant, spqr  # noqa: F401
