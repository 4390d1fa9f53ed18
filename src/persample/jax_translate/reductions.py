"""Reductions and normalised exponentials in JAX with torch's signatures and dtype rules.

Half-precision inputs are reduced in float32 and rounded back, as torch's kernels do; sums of
integers and booleans come out as torch's int64 (int32 outside JAX's x64 mode).
"""
from __future__ import annotations

from collections import namedtuple

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F

from .numerics import widened
from .tensors import canonical
from .vocabulary import translates

ValuesIndices = namedtuple("ValuesIndices", "values indices")


def axes(dim):
    """torch's `dim` (None, an int, a tuple or a list) as a JAX `axis`."""
    return tuple(dim) if isinstance(dim, (tuple, list)) else dim


def result_dtype(x, dtype):
    return canonical(dtype) if dtype is not None else x.dtype


@translates(torch.mean, "mean")
def mean(x, dim=None, keepdim=False, *, dtype=None):
    return jnp.mean(widened(x), axis=axes(dim), keepdims=keepdim).astype(result_dtype(x, dtype))


@translates(torch.sum, "sum")
def sum_(x, dim=None, keepdim=False, *, dtype=None):
    if dtype is None and not jnp.issubdtype(x.dtype, jnp.floating):
        dtype = torch.int64
    return jnp.sum(widened(x), axis=axes(dim), keepdims=keepdim).astype(result_dtype(x, dtype))


def extreme(reduce, arg_reduce, elementwise):
    def impl(x, dim=None, keepdim=False):
        if dim is None:
            return reduce(x)
        if hasattr(dim, "shape"):  # max(x, other): elementwise
            return elementwise(x, dim)
        return ValuesIndices(reduce(x, axis=dim, keepdims=keepdim), arg_reduce(x, axis=dim, keepdims=keepdim))
    impl.__qualname__ = impl.__name__ = f"extreme_{reduce.__name__}"
    return impl


translates(torch.max, "max")(extreme(jnp.max, jnp.argmax, jnp.maximum))
translates(torch.min, "min")(extreme(jnp.min, jnp.argmin, jnp.minimum))


@translates(torch.amax, "amax")
def amax(x, dim=(), keepdim=False):
    return jnp.max(x, axis=None if dim == () else axes(dim), keepdims=keepdim)


@translates(torch.amin, "amin")
def amin(x, dim=(), keepdim=False):
    return jnp.min(x, axis=None if dim == () else axes(dim), keepdims=keepdim)


@translates(torch.argmax, "argmax")
def argmax(x, dim=None, keepdim=False):
    return jnp.argmax(x, axis=dim, keepdims=keepdim)


def variance(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if isinstance(dim, bool):  # var(x, unbiased)
        dim, unbiased = None, dim
    ddof = correction if correction is not None else (0 if unbiased is False else 1)
    return jnp.var(widened(x), axis=axes(dim), ddof=ddof, keepdims=keepdim).astype(x.dtype)


translates(torch.var, "var")(variance)


@translates(torch.std, "std")
def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return jnp.sqrt(variance(widened(x), dim, unbiased, keepdim, correction=correction)).astype(x.dtype)


@translates(torch.logsumexp, "logsumexp")
def logsumexp(x, dim, keepdim=False):
    return jax.nn.logsumexp(widened(x), axis=axes(dim), keepdims=keepdim).astype(x.dtype)


def implicit_dim(x) -> int:
    """torch's legacy softmax dimension when none is given."""
    return 0 if x.ndim in (0, 1, 3) else 1


@translates(torch.softmax, F.softmax, "softmax")
def softmax(x, dim=None, _stacklevel=3, dtype=None):
    dim = implicit_dim(x) if dim is None else dim
    return jax.nn.softmax(widened(x), axis=dim).astype(result_dtype(x, dtype))


@translates(torch.log_softmax, F.log_softmax, "log_softmax")
def log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    dim = implicit_dim(x) if dim is None else dim
    return jax.nn.log_softmax(widened(x), axis=dim).astype(result_dtype(x, dtype))


@translates(F.normalize)
def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    # x / max(‖x‖_p, eps), written so the gradient stays finite where x = 0
    wide = widened(x)
    powered = jnp.sum(jnp.abs(wide) ** p, axis=dim, keepdims=True)
    return (wide / jnp.maximum(powered, eps ** p) ** (1 / p)).astype(x.dtype)
