"""Tensors created inside a forward (positions, masks, fills) as JAX arrays.

Placement arguments (device, layout, pin_memory, requires_grad) have no meaning here: the
compiled function runs on one device and differentiates only the weights.
"""
from __future__ import annotations

import jax.numpy as jnp
import torch

from .tensors import canonical, default_float, sizes
from .vocabulary import translates


def dtype_or(dtype, fallback) -> jnp.dtype:
    """The JAX dtype of the torch `dtype`, or `fallback` when it is None."""
    return canonical(dtype) if dtype is not None else fallback


@translates(torch.arange)
def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    """torch.arange: int64 when start, end and step are all ints, else the default float dtype (unless
    `dtype`).
    """
    integral = all(isinstance(v, int) for v in (start, end, step) if v is not None)
    fallback = canonical(torch.int64) if integral else default_float()
    return jnp.arange(start, end, step, dtype=dtype_or(dtype, fallback))


def filled(value):
    """A torch.zeros/torch.ones-like creator of arrays of `size` filled with `value` (default float dtype
    unless `dtype`).
    """
    def create(*size, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
        return jnp.full(sizes(size), value, dtype=dtype_or(dtype, default_float()))
    create.__qualname__ = create.__name__ = f"filled_{value}"
    return create


translates(torch.zeros)(filled(0))
translates(torch.ones)(filled(1))


@translates(torch.full)
def full(size, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    """torch.full: an array of `size` filled with `fill_value`; float fills take the default float dtype,
    others int64, unless `dtype`.
    """
    fallback = default_float() if isinstance(fill_value, float) else canonical(torch.int64)
    return jnp.full(tuple(size), fill_value, dtype=dtype_or(dtype, fallback))


@translates(torch.full_like)
def full_like(x, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None, memory_format=None):
    """torch.full_like: an array of `x`'s shape filled with `fill_value`, in `x`'s dtype unless `dtype`."""
    return jnp.full(x.shape, fill_value, dtype=dtype_or(dtype, x.dtype))


@translates(torch.zeros_like)
def zeros_like(x, *, dtype=None, device=None, requires_grad=False, layout=None, memory_format=None):
    """torch.zeros_like: zeros of `x`'s shape and dtype (unless `dtype`)."""
    return full_like(x, 0, dtype=dtype)


@translates(torch.ones_like)
def ones_like(x, *, dtype=None, device=None, requires_grad=False, layout=None, memory_format=None):
    """torch.ones_like: ones of `x`'s shape and dtype (unless `dtype`)."""
    return full_like(x, 1, dtype=dtype)


@translates("new_full")
def new_full(x, size, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    """Tensor.new_full: an array of `size` filled with `fill_value`, in `x`'s dtype unless `dtype`."""
    return jnp.full(tuple(size), fill_value, dtype=dtype_or(dtype, x.dtype))


@translates("new_zeros")
def new_zeros(x, *size, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    """Tensor.new_zeros: zeros of `size`, in `x`'s dtype unless `dtype`."""
    return new_full(x, sizes(size), 0, dtype=dtype)


@translates("new_ones")
def new_ones(x, *size, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    """Tensor.new_ones: ones of `size`, in `x`'s dtype unless `dtype`."""
    return new_full(x, sizes(size), 1, dtype=dtype)
