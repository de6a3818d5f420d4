"""Compute on formats: reference (pure torch) kernels, CPU kernels (numba), GPU kernels (Triton)
and the single dispatch table."""

from sparsa.kernels.dispatch import (bind_linear, kernel_name, linear, record_kernel, recorded_kernels,
                                     register_linear_kernel, select_linear_kernel, step_kernel)
from sparsa.kernels.reference import linear_reference
from sparsa.kernels import cpu  # noqa: F401  (files the CPU kernels)
from sparsa.kernels import triton  # noqa: F401  (files the GPU kernels)

__all__ = ["bind_linear", "kernel_name", "linear", "linear_reference", "record_kernel", "recorded_kernels",
           "register_linear_kernel", "select_linear_kernel", "step_kernel"]
