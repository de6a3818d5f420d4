"""Compute on formats: reference (pure torch) kernels and the single dispatch table."""

from sparsa.kernels.dispatch import linear, register_linear_kernel, select_linear_kernel
from sparsa.kernels.reference import linear_reference

__all__ = ["linear", "linear_reference", "register_linear_kernel", "select_linear_kernel"]
