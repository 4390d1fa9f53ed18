"""Elementwise torch operations in JAX: arithmetic, comparisons, math functions and activations.

Python operators act on JAX arrays (and on the static shape integers) with torch's meaning, so
they are registered as themselves; torch's named functions get small torch-signature wrappers.
"""
from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from jax.scipy.special import erf

from .numerics import in_float32
from .vocabulary import translates

OPERATORS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.neg, operator.pos, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, operator.and_, operator.or_, operator.invert,
)
for _op in OPERATORS:
    translates(_op)(_op)
for _fn in (math.sqrt, math.exp, math.log, math.floor, math.ceil, math.pow):
    translates(_fn)(_fn)  # applied to static shapes: plain Python numbers


@translates(torch.add, "add")
def add(x, other, *, alpha=1):
    """torch.add / Tensor.add: x + alpha * other, broadcast."""
    return x + alpha * other if alpha != 1 else x + other


@translates(torch.sub, torch.subtract, "sub")
def sub(x, other, *, alpha=1):
    """torch.sub / Tensor.sub: x - alpha * other, broadcast."""
    return x - alpha * other if alpha != 1 else x - other


@translates(torch.mul, torch.multiply, "mul")
def mul(x, other):
    """torch.mul / Tensor.mul: x * other, broadcast."""
    return x * other


@translates(torch.div, torch.divide, "div")
def div(x, other, *, rounding_mode=None):
    """torch.div / Tensor.div: x / other, rounded toward -inf (`rounding_mode='floor'`) or zero ('trunc') when
    asked.
    """
    if rounding_mode == "floor":
        return jnp.floor_divide(x, other)
    quotient = jnp.true_divide(x, other)
    return jnp.trunc(quotient) if rounding_mode == "trunc" else quotient


def unary(*targets, fn):
    """Register `fn` (a jnp function of one array, computed in at least float32) as the translation of
    `targets`; returns the translation.
    """
    impl = in_float32(lambda x: fn(x))
    impl.__qualname__ = impl.__name__ = f"unary_{fn.__name__}"
    impl.__doc__ = f"jnp's {fn.__name__} of x, elementwise (half precision computed in float32 and rounded back)."
    return translates(*targets)(impl)


unary(torch.exp, "exp", fn=jnp.exp)
unary(torch.log, "log", fn=jnp.log)
unary(torch.log1p, "log1p", fn=jnp.log1p)
unary(torch.sqrt, "sqrt", fn=jnp.sqrt)
unary(torch.rsqrt, "rsqrt", fn=jax.lax.rsqrt)
unary(torch.abs, "abs", fn=jnp.abs)
unary(torch.neg, "neg", fn=jnp.negative)
unary(torch.square, "square", fn=jnp.square)
unary(torch.erf, "erf", fn=erf)
unary(torch.sin, "sin", fn=jnp.sin)
unary(torch.cos, "cos", fn=jnp.cos)
unary(torch.reciprocal, "reciprocal", fn=jnp.reciprocal)
sigmoid = unary(torch.sigmoid, F.sigmoid, "sigmoid", fn=jax.nn.sigmoid)
tanh = unary(torch.tanh, F.tanh, "tanh", fn=jnp.tanh)


@translates(torch.pow, "pow")
def power(x, exponent):
    """torch.pow / Tensor.pow: x ** exponent."""
    return x ** exponent


@translates(torch.relu, F.relu, "relu")
def relu(x, inplace=False):
    """torch.relu / F.relu: max(x, 0)."""
    return jax.nn.relu(x)


@translates(F.gelu)
@in_float32
def gelu(x, approximate="none"):
    """F.gelu: x·Φ(x) (Hendrycks & Gimpel 2016), or its tanh approximation when `approximate='tanh'`; computed
    in at least float32.
    """
    return jax.nn.gelu(x, approximate=approximate == "tanh")


@translates(F.silu)
@in_float32
def silu(x, inplace=False):
    """F.silu: x·sigmoid(x); computed in at least float32."""
    return x * jax.nn.sigmoid(x)


@translates(F.leaky_relu)
def leaky_relu(x, negative_slope=0.01, inplace=False):
    """F.leaky_relu: x where x >= 0, else negative_slope·x."""
    return jnp.where(x >= 0, x, negative_slope * x)


@translates(F.elu)
@in_float32
def elu(x, alpha=1.0, inplace=False):
    """F.elu: x where x > 0, else alpha·(exp(x) - 1); computed in at least float32."""
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))


@translates(F.softplus)
@in_float32
def softplus(x, beta=1.0, threshold=20.0):
    """F.softplus: log(1 + exp(beta·x)) / beta, and x itself where beta·x > threshold (as torch); computed in
    at least float32.
    """
    # torch returns x itself where beta * x > threshold (where log1p(exp) would overflow)
    scaled = beta * x
    soft = jnp.log1p(jnp.exp(jnp.minimum(scaled, threshold))) / beta
    return jnp.where(scaled > threshold, x, soft)


@translates(torch.clamp, torch.clip, "clamp", "clip")
def clamp(x, min=None, max=None):
    """torch.clamp / clip: x limited to [min, max] (either bound may be None)."""
    return jnp.clip(x, min, max)


@translates(torch.maximum, "maximum")
def maximum(x, other):
    """torch.maximum: the elementwise maximum, broadcast."""
    return jnp.maximum(x, other)


@translates(torch.minimum, "minimum")
def minimum(x, other):
    """torch.minimum: the elementwise minimum, broadcast."""
    return jnp.minimum(x, other)


@translates(torch.where)
def where(condition, x, other):
    """torch.where(condition, x, other): x where condition holds, else other."""
    return jnp.where(condition, x, other)


@translates("where")
def where_method(x, condition, other):
    """Tensor.where(condition, other): x where condition holds, else other."""
    return jnp.where(condition, x, other)


@translates("masked_fill")
def masked_fill(x, mask, value):
    """Tensor.masked_fill: `value` (in x's dtype) where `mask` holds, else x."""
    return jnp.where(mask, jnp.asarray(value, dtype=x.dtype), x)
