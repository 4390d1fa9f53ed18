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
ValuesIndices.__doc__ = "(values, indices), what torch.max/min(x, dim) return."


def axes(dim):
    """torch's `dim` (None, an int, a tuple or a list) as a JAX `axis`."""
    return tuple(dim) if isinstance(dim, (tuple, list)) else dim


def result_dtype(x, dtype):
    """The JAX dtype of the torch `dtype`, or x's dtype when it is None."""
    return canonical(dtype) if dtype is not None else x.dtype


@translates(torch.mean, "mean")
def mean(x, dim=None, keepdim=False, *, dtype=None):
    """torch.mean / Tensor.mean over `dim` (all dims when None), computed in at least float32; in x's dtype
    unless `dtype`.
    """
    return jnp.mean(widened(x), axis=axes(dim), keepdims=keepdim).astype(result_dtype(x, dtype))


@translates(torch.sum, "sum")
def sum_(x, dim=None, keepdim=False, *, dtype=None):
    """torch.sum / Tensor.sum over `dim`, computed in at least float32; integers and booleans sum to int64 as
    torch (int32 outside JAX's x64 mode).
    """
    if dtype is None and not jnp.issubdtype(x.dtype, jnp.floating):
        dtype = torch.int64
    return jnp.sum(widened(x), axis=axes(dim), keepdims=keepdim).astype(result_dtype(x, dtype))


def extreme(reduce, arg_reduce, elementwise):
    """A torch.max/min-like function: the whole reduction without `dim`, (values, indices) with an int `dim`,
    the elementwise extreme with a tensor second argument.
    """
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
    """torch.amax: the maximum over `dim` (all dims when empty)."""
    return jnp.max(x, axis=None if dim == () else axes(dim), keepdims=keepdim)


@translates(torch.amin, "amin")
def amin(x, dim=(), keepdim=False):
    """torch.amin: the minimum over `dim` (all dims when empty)."""
    return jnp.min(x, axis=None if dim == () else axes(dim), keepdims=keepdim)


@translates(torch.argmax, "argmax")
def argmax(x, dim=None, keepdim=False):
    """torch.argmax: indices of the maximum over `dim` (of the flattened array when None)."""
    return jnp.argmax(x, axis=dim, keepdims=keepdim)


def variance(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """torch.var: variance over `dim` with `correction` (default 1, Bessel's; `unbiased=False` gives 0),
    computed in at least float32, in x's dtype.
    """
    if isinstance(dim, bool):  # var(x, unbiased)
        dim, unbiased = None, dim
    ddof = correction if correction is not None else (0 if unbiased is False else 1)
    return jnp.var(widened(x), axis=axes(dim), ddof=ddof, keepdims=keepdim).astype(x.dtype)


translates(torch.var, "var")(variance)


@translates(torch.std, "std")
def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """torch.std: the square root of `variance`, in x's dtype."""
    return jnp.sqrt(variance(widened(x), dim, unbiased, keepdim, correction=correction)).astype(x.dtype)


@translates(torch.logsumexp, "logsumexp")
def logsumexp(x, dim, keepdim=False):
    """torch.logsumexp: log Σ exp(x) over `dim`, computed stably in at least float32, in x's dtype."""
    return jax.nn.logsumexp(widened(x), axis=axes(dim), keepdims=keepdim).astype(x.dtype)


def implicit_dim(x) -> int:
    """torch's legacy softmax dimension when none is given."""
    return 0 if x.ndim in (0, 1, 3) else 1


@translates(torch.softmax, F.softmax, "softmax")
def softmax(x, dim=None, _stacklevel=3, dtype=None):
    """torch.softmax / F.softmax over `dim` (torch's legacy implicit dim when None), computed in at least
    float32; in x's dtype unless `dtype`.
    """
    dim = implicit_dim(x) if dim is None else dim
    return jax.nn.softmax(widened(x), axis=dim).astype(result_dtype(x, dtype))


@translates(torch.log_softmax, F.log_softmax, "log_softmax")
def log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    """torch.log_softmax / F.log_softmax over `dim` (torch's legacy implicit dim when None), computed in at
    least float32; in x's dtype unless `dtype`.
    """
    dim = implicit_dim(x) if dim is None else dim
    return jax.nn.log_softmax(widened(x), axis=dim).astype(result_dtype(x, dtype))


@translates(F.normalize)
def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    """F.normalize: x / max(‖x‖_p, eps) along `dim`, written so the gradient stays finite where x = 0; in x's
    dtype.
    """
    # x / max(‖x‖_p, eps), written so the gradient stays finite where x = 0
    wide = widened(x)
    powered = jnp.sum(jnp.abs(wide) ** p, axis=dim, keepdims=True)
    return (wide / jnp.maximum(powered, eps ** p) ** (1 / p)).astype(x.dtype)
