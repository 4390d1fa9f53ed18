"""Precision helpers: half-precision values are computed in float32 and rounded back, as torch does.

torch's CPU and CUDA kernels accumulate bfloat16/float16 reductions, normalisations, softmax and
matrix products in float32 ("opmath"); doing the same keeps the translation as accurate as torch.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import torch

HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

JAX_DTYPES: dict[torch.dtype, jnp.dtype] = {
    torch.float64: jnp.dtype(jnp.float64), torch.float32: jnp.dtype(jnp.float32),
    torch.float16: jnp.dtype(jnp.float16), torch.bfloat16: jnp.dtype(jnp.bfloat16),
    torch.int64: jnp.dtype(jnp.int64), torch.int32: jnp.dtype(jnp.int32),
    torch.int16: jnp.dtype(jnp.int16), torch.int8: jnp.dtype(jnp.int8),
    torch.uint8: jnp.dtype(jnp.uint8), torch.bool: jnp.dtype(jnp.bool_),
}


def jax_dtype(dtype) -> jnp.dtype:
    """The JAX dtype for a torch dtype (or a JAX/NumPy dtype, passed through)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in JAX_DTYPES:
            raise TypeError(f"no JAX dtype for {dtype}")
        return JAX_DTYPES[dtype]
    return jnp.dtype(dtype)


def widened(x):
    """`x` in float32 if it is a half-precision array, else unchanged."""
    return x.astype(jnp.float32) if getattr(x, "dtype", None) in HALF else x


def accumulator(*arrays) -> jnp.dtype | None:
    """`preferred_element_type` for a matrix product or convolution: float32 for half inputs."""
    return jnp.dtype(jnp.float32) if any(a.dtype in HALF for a in arrays) else None


def in_float32(fn: Callable) -> Callable:
    """Run `fn` with its half-precision first argument widened, rounding the result back."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        result = fn(widened(x), *args, **kwargs)
        dtype = getattr(x, "dtype", None)
        return result.astype(dtype) if dtype in HALF else result

    return wrapper
