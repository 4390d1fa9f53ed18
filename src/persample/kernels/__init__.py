"""Triton kernels for per-sample gradients, one module per layer family, registered by layer type."""
from .registry import KernelRule, kernel_rule_for, kernel_types, placement_of, register_kernel
from .tuning import INTERPRETED
from . import conv, embedding, linear, norms  # noqa: F401,E402  (register the kernels)

__all__ = ["INTERPRETED", "KernelRule", "kernel_rule_for", "kernel_types", "placement_of", "register_kernel"]
