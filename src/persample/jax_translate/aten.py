"""ATen operations in JAX: the vocabulary of the graphs `capture` records with real values.

`capture` runs the model and its loss on one sample with `make_fx` and functionalization, so its
graph holds ATen operations without mutation or aliasing (views come as `*_copy`), in the
argument order of their schemas. `ATEN` maps an operator (an overload, or its packet for every
overload) to a JAX function taking the node's arguments; `guarded` casts each result to the
dtype torch gave it and checks its shape, so a promotion rule JAX applies otherwise cannot
change a value unnoticed. Half-precision values are computed as torch's kernels do (reductions,
normalisations, softmax and products in float32, rounded once), reusing the translations of the
torch functions where they exist.

What cannot be translated faithfully is listed with the reason: operators whose output shape
depends on the values (`DATA_DEPENDENT_SHAPES`), and those drawing random numbers (any operator
tagged `nondeterministic_seeded`), which cannot match torch's draws.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import torch

from ..errors import Unsupported
from . import conv as conv_ops
from . import elementwise, layers, losses, matmul, norms, pooling, reductions, tensors
from .numerics import accumulator, in_float32, widened
from .tensors import canonical

aten = torch.ops.aten
ATEN: dict[object, object] = {}
"""`{OpOverload or OpOverloadPacket: jax implementation}`; an overload's own entry wins over its packet's."""

DATA_DEPENDENT_SHAPES = {
    "nonzero": "returns as many rows as there are non-zero values",
    "masked_select": "returns as many values as the mask selects",
    "unique": "returns as many values as there are distinct ones",
    "_unique2": "returns as many values as there are distinct ones",
    "unique_dim": "returns as many values as there are distinct ones",
    "unique_consecutive": "returns as many values as there are runs",
    "repeat_interleave": "repeats by counts read from a tensor",
    "masked_scatter": "consumes as many values as the mask selects",
}
"""Operators whose output shape depends on the values: one compiled program has static shapes."""


def translates(*ops):
    """Register a JAX implementation for ATen operators (overloads or packets)."""
    def decorate(impl):
        for op in ops:
            ATEN[op] = impl
        return impl
    return decorate


def lookup(op):
    """The JAX implementation of an ATen operator, or None."""
    impl = ATEN.get(op)
    if impl is None and hasattr(op, "overloadpacket"):
        impl = ATEN.get(op.overloadpacket)
    return impl


def dims_of(dim, ndim: int):
    """An ATen `int[1]? dim` as a JAX axis: None or [] means every dim."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    return tuple(d % ndim if ndim else d for d in dim) if isinstance(dim, (list, tuple)) else dim


def jdtype(dtype):
    """The JAX dtype of a torch dtype (None stays None)."""
    return None if dtype is None else canonical(dtype)


# ---- views and copies: functional values here -------------------------------------------------

@translates(aten.view, aten.view_copy, aten._unsafe_view, aten.reshape, aten._reshape_alias, aten._reshape_alias_copy)
def view(x, size, *rest):
    """view / reshape (and their copies) to `size`; view(dtype) is refused."""
    if isinstance(size, torch.dtype):
        raise Unsupported("Tensor.view(dtype) reinterprets memory; the jax method has no translation for it", method="jax")
    return jnp.reshape(x, tuple(size))


@translates(aten.alias, aten.alias_copy, aten.clone, aten.lift_fresh_copy, aten.lift_fresh, aten.contiguous,
            aten._conj, aten.resolve_conj, aten.resolve_neg, aten.positive)
def identity(x, *args, **kwargs):
    """Aliases and copies: the value itself (JAX arrays are immutable)."""
    return x


@translates(aten.detach, aten.detach_copy)
def detach(x):
    """detach: the value with its gradient stopped."""
    return jax.lax.stop_gradient(x)


@translates(aten.t, aten.t_copy)
def t(x):
    """t: a 2-d array transposed, others as they are."""
    return tensors.t(x)


@translates(aten.transpose, aten.transpose_copy)
def transpose(x, dim0, dim1):
    """transpose.int: dims exchanged."""
    return jnp.swapaxes(x, dim0, dim1)


@translates(aten.permute, aten.permute_copy)
def permute(x, dims):
    """permute: dims reordered."""
    return jnp.transpose(x, tuple(dims))


@translates(aten.expand, aten.expand_copy)
def expand(x, size, *, implicit=False):
    """expand: broadcast to `size` (-1 keeps a dim)."""
    return tensors.expand(x, *size)


@translates(aten.unsqueeze, aten.unsqueeze_copy)
def unsqueeze(x, dim):
    """unsqueeze: a dim of size 1 inserted."""
    return jnp.expand_dims(x, dim)


@translates(aten.squeeze, aten.squeeze_copy)
def squeeze(x, dim=None):
    """squeeze (.default, .dim, .dims): the size-1 dims among `dim` removed."""
    return tensors.squeeze(x, dim)


@translates(aten.slice, aten.slice_copy)
def slice_(x, dim=0, start=None, end=None, step=1):
    """slice.Tensor: x[..., start:end:step, ...] along `dim` (bounds clamped, as Python slices)."""
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


@translates(aten.select, aten.select_copy)
def select(x, dim, index):
    """select.int: the slice at `index` along `dim`, that dim removed."""
    return jax.lax.index_in_dim(x, index % x.shape[dim], axis=dim, keepdims=False)


@translates(aten.split, aten.split_copy, aten.split_with_sizes, aten.split_with_sizes_copy)
def split(x, split_size, dim=0):
    """split.Tensor / split_with_sizes: the pieces along `dim`, as a list."""
    return list(tensors.split(x, split_size, dim))


@translates(aten.unbind, aten.unbind_copy)
def unbind(x, dim=0):
    """unbind.int: the slices along `dim`, as a list."""
    return list(tensors.unbind(x, dim))


@translates(aten.chunk)
def chunk(x, chunks, dim=0):
    """chunk: `split` into pieces of ⌈size / chunks⌉."""
    return list(tensors.chunk(x, chunks, dim))


@translates(aten.diagonal, aten.diagonal_copy)
def diagonal(x, offset=0, dim1=0, dim2=1):
    """diagonal: the diagonal of dims dim1, dim2, as the last dim."""
    return jnp.diagonal(x, offset, dim1, dim2)


@translates(aten.cat)
def cat(tensors_, dim=0):
    """cat: joined along `dim` (1-d empty tensors skipped, as torch's legacy rule)."""
    kept = [x for x in tensors_ if not (x.ndim == 1 and x.shape[0] == 0)] or list(tensors_)
    return jnp.concatenate(kept, axis=dim % kept[0].ndim)


@translates(aten.stack)
def stack(tensors_, dim=0):
    """stack: along a new dim."""
    return jnp.stack(tensors_, axis=dim)


@translates(aten.repeat)
def repeat(x, repeats):
    """repeat: tiled."""
    return jnp.tile(x, tuple(repeats))


@translates(aten.roll)
def roll(x, shifts, dims=()):
    """roll: shifted cyclically (flattened when no dims)."""
    if not dims:
        return jnp.roll(x.reshape(-1), next(iter(shifts))).reshape(x.shape)
    return jnp.roll(x, tuple(shifts), axis=tuple(dims))


@translates(aten.flip)
def flip(x, dims):
    """flip: reversed along `dims`."""
    return jnp.flip(x, axis=tuple(dims))


@translates(aten.tril)
def tril(x, diagonal=0):
    """tril: below the diagonal kept."""
    return jnp.tril(x, diagonal)


@translates(aten.triu)
def triu(x, diagonal=0):
    """triu: above the diagonal kept."""
    return jnp.triu(x, diagonal)


@translates(aten.constant_pad_nd)
def constant_pad_nd(x, pad, value=0):
    """constant_pad_nd: pairs (before, after) from the last dim backwards; negative amounts crop."""
    config = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        config[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return jax.lax.pad(x, jnp.asarray(value, x.dtype), config)


@translates(aten._to_copy, aten.to)
def to_copy(x, *args, dtype=None, **kwargs):
    """_to_copy: cast to `dtype` (devices and layouts have no meaning here)."""
    for arg in args:
        if isinstance(arg, torch.dtype):
            dtype = arg
    return x if dtype is None else x.astype(canonical(dtype))


@translates(aten.copy)
def copy(x, src, non_blocking=False):
    """copy (functional copy_): `src` broadcast to x's shape, in x's dtype."""
    return jnp.broadcast_to(jnp.asarray(src).astype(x.dtype), x.shape)


# ---- creation ---------------------------------------------------------------------------------

@translates(aten.arange)
def arange(*args, dtype=None, **kwargs):
    """arange (.default, .start, .start_step)."""
    return jnp.arange(*args, dtype=jdtype(dtype))


@translates(aten.full)
def full(size, fill_value, *, dtype=None, **kwargs):
    """full: `size` filled with `fill_value`."""
    return jnp.full(tuple(size), fill_value, dtype=jdtype(dtype))


@translates(aten.zeros, aten.empty, aten.empty_strided)
def zeros(size, *args, dtype=None, **kwargs):
    """zeros; empty and empty_strided too (their values are undefined in torch, and overwritten)."""
    return jnp.zeros(tuple(size), dtype=jdtype(dtype) or tensors.default_float())


@translates(aten.ones)
def ones(size, *, dtype=None, **kwargs):
    """ones."""
    return jnp.ones(tuple(size), dtype=jdtype(dtype) or tensors.default_float())


@translates(aten.scalar_tensor)
def scalar_tensor(value, *, dtype=None, **kwargs):
    """scalar_tensor: a 0-d array."""
    return jnp.asarray(value, dtype=jdtype(dtype) or tensors.default_float())


@translates(aten.full_like)
def full_like(x, fill_value, *, dtype=None, **kwargs):
    """full_like."""
    return jnp.full(x.shape, fill_value, dtype=jdtype(dtype) or x.dtype)


@translates(aten.zeros_like, aten.empty_like)
def zeros_like(x, *, dtype=None, **kwargs):
    """zeros_like; empty_like too (undefined values in torch)."""
    return jnp.zeros(x.shape, dtype=jdtype(dtype) or x.dtype)


@translates(aten.ones_like)
def ones_like(x, *, dtype=None, **kwargs):
    """ones_like."""
    return jnp.ones(x.shape, dtype=jdtype(dtype) or x.dtype)


@translates(aten.new_full)
def new_full(x, size, fill_value, *, dtype=None, **kwargs):
    """new_full."""
    return jnp.full(tuple(size), fill_value, dtype=jdtype(dtype) or x.dtype)


@translates(aten.new_zeros, aten.new_empty, aten.new_empty_strided)
def new_zeros(x, size, *args, dtype=None, **kwargs):
    """new_zeros; new_empty(_strided) too."""
    return jnp.zeros(tuple(size), dtype=jdtype(dtype) or x.dtype)


@translates(aten.new_ones)
def new_ones(x, size, *, dtype=None, **kwargs):
    """new_ones."""
    return jnp.ones(tuple(size), dtype=jdtype(dtype) or x.dtype)


@translates(aten.fill)
def fill(x, value):
    """fill (functional fill_)."""
    return jnp.full(x.shape, value, dtype=x.dtype)


@translates(aten.zero)
def zero(x):
    """zero (functional zero_)."""
    return jnp.zeros_like(x)


# ---- elementwise ------------------------------------------------------------------------------

@translates(aten.add)
def add(x, other, *, alpha=1):
    """add: x + alpha·other."""
    return x + other if alpha == 1 else x + alpha * other


@translates(aten.sub)
def sub(x, other, *, alpha=1):
    """sub: x - alpha·other."""
    return x - other if alpha == 1 else x - alpha * other


@translates(aten.rsub)
def rsub(x, other, *, alpha=1):
    """rsub: other - alpha·x."""
    return other - x if alpha == 1 else other - alpha * x


@translates(aten.mul)
def mul(x, other):
    """mul."""
    return x * other


@translates(aten.div)
def div(x, other, *, rounding_mode=None):
    """div (.Tensor, .Scalar, .Tensor_mode, .Scalar_mode)."""
    return elementwise.div(x, other, rounding_mode=rounding_mode)


@translates(aten.floor_divide)
def floor_divide(x, other):
    """floor_divide."""
    return jnp.floor_divide(x, other)


@translates(aten.remainder)
def remainder(x, other):
    """remainder: the sign of the divisor, as Python's %."""
    return jnp.remainder(x, other)


@translates(aten.fmod)
def fmod(x, other):
    """fmod: the sign of the dividend, as C's fmod."""
    return jnp.fmod(x, other)


@translates(aten.pow)
def power(x, exponent):
    """pow (.Tensor_Scalar, .Tensor_Tensor, .Scalar)."""
    if isinstance(exponent, int) and not isinstance(exponent, bool) and hasattr(x, "dtype"):
        return jax.lax.integer_pow(x, exponent) if exponent >= 0 else 1 / jax.lax.integer_pow(x, -exponent)
    return jnp.power(x, exponent)


def _unary(op, fn):
    impl = in_float32(fn)
    impl.__qualname__ = impl.__name__ = f"aten_{op._qualified_op_name.split('::')[1]}"
    ATEN[op] = impl


for _op, _fn in {
    aten.abs: jnp.abs, aten.neg: jnp.negative, aten.exp: jnp.exp, aten.exp2: jnp.exp2, aten.expm1: jnp.expm1,
    aten.log: jnp.log, aten.log2: jnp.log2, aten.log10: jnp.log10, aten.log1p: jnp.log1p,
    aten.sqrt: jnp.sqrt, aten.rsqrt: jax.lax.rsqrt, aten.sin: jnp.sin, aten.cos: jnp.cos, aten.tan: jnp.tan,
    aten.tanh: jnp.tanh, aten.sigmoid: jax.nn.sigmoid, aten.erf: jax.scipy.special.erf,
    aten.reciprocal: jnp.reciprocal, aten.atan: jnp.arctan, aten.asin: jnp.arcsin, aten.acos: jnp.arccos,
    aten.sinh: jnp.sinh, aten.cosh: jnp.cosh, aten.sign: jnp.sign, aten.floor: jnp.floor, aten.ceil: jnp.ceil,
    aten.trunc: jnp.trunc, aten.frac: lambda x: x - jnp.trunc(x), aten.square: jnp.square,
}.items():
    _unary(_op, _fn)


@translates(aten.round)
def round_(x, *, decimals=0):
    """round: half to even, as torch."""
    return jnp.round(x, decimals)


@translates(aten.relu)
def relu(x):
    """relu."""
    return jax.nn.relu(x)


@translates(aten.gelu)
def gelu(x, *, approximate="none"):
    """gelu (exact or tanh)."""
    return elementwise.gelu(x, approximate)


@translates(aten.silu)
def silu(x):
    """silu."""
    return elementwise.silu(x)


@translates(aten.mish)
@in_float32
def mish(x):
    """mish: x·tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


@translates(aten.hardtanh)
def hardtanh(x, min_val=-1, max_val=1):
    """hardtanh (relu6 too)."""
    return jnp.clip(x, min_val, max_val)


@translates(aten.hardsigmoid)
def hardsigmoid(x):
    """hardsigmoid: clip(x/6 + 1/2, 0, 1)."""
    return jnp.clip(x / 6 + 0.5, 0, 1)


@translates(aten.hardswish)
def hardswish(x):
    """hardswish: x·hardsigmoid(x)."""
    return x * jnp.clip(x / 6 + 0.5, 0, 1)


@translates(aten.leaky_relu)
def leaky_relu(x, negative_slope=0.01):
    """leaky_relu."""
    return elementwise.leaky_relu(x, negative_slope)


@translates(aten.elu)
def elu(x, alpha=1, scale=1, input_scale=1):
    """elu (selu and celu decompose to it)."""
    return scale * elementwise.elu(x * input_scale, alpha) if input_scale == 1 else (
        scale * jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x * input_scale, 0))))


@translates(aten.softplus)
def softplus(x, beta=1, threshold=20):
    """softplus."""
    return elementwise.softplus(x, beta, threshold)


@translates(aten.log_sigmoid_forward)
def log_sigmoid_forward(x):
    """log_sigmoid_forward: (log σ(x), its buffer, unused)."""
    return in_float32(jax.nn.log_sigmoid)(x), None


@translates(aten._prelu_kernel)
def prelu(x, weight):
    """_prelu_kernel: x where x > 0, else weight·x (weight over dim 1)."""
    w = weight.reshape((-1,) + (1,) * (x.ndim - 2)) if x.ndim >= 2 and weight.size > 1 else weight
    return jnp.where(x > 0, x, w * x)


@translates(aten.glu)
def glu(x, dim=-1):
    """glu: a·σ(b) of x's halves along `dim`."""
    a, b = jnp.split(x, 2, axis=dim)
    return a * jax.nn.sigmoid(b)


@translates(aten.clamp, aten.clip)
def clamp(x, min=None, max=None):
    """clamp (.default, .Tensor)."""
    return jnp.clip(x, min, max)


@translates(aten.clamp_min)
def clamp_min(x, min):
    """clamp_min."""
    return jnp.maximum(x, min)


@translates(aten.clamp_max)
def clamp_max(x, max):
    """clamp_max."""
    return jnp.minimum(x, max)


@translates(aten.maximum, aten.max.other, aten.fmax)
def maximum(x, other):
    """maximum."""
    return jnp.maximum(x, other)


@translates(aten.minimum, aten.min.other, aten.fmin)
def minimum(x, other):
    """minimum."""
    return jnp.minimum(x, other)


for _op, _fn in {aten.eq: jnp.equal, aten.ne: jnp.not_equal, aten.lt: jnp.less, aten.le: jnp.less_equal,
                 aten.gt: jnp.greater, aten.ge: jnp.greater_equal, aten.bitwise_and: jnp.bitwise_and,
                 aten.bitwise_or: jnp.bitwise_or, aten.bitwise_xor: jnp.bitwise_xor,
                 aten.logical_and: jnp.logical_and, aten.logical_or: jnp.logical_or,
                 aten.logical_xor: jnp.logical_xor, aten.atan2: jnp.arctan2}.items():
    ATEN[_op] = _fn
ATEN[aten.bitwise_not] = jnp.invert
ATEN[aten.logical_not] = jnp.logical_not
ATEN[aten.isnan] = jnp.isnan
ATEN[aten.isinf] = jnp.isinf
ATEN[aten.isfinite] = jnp.isfinite


@translates(aten.where)
def where(condition, x, other):
    """where.self (and its scalar overloads)."""
    return jnp.where(condition, x, other)


@translates(aten.masked_fill)
def masked_fill(x, mask, value):
    """masked_fill (.Scalar, .Tensor)."""
    return jnp.where(mask, jnp.asarray(value).astype(x.dtype), x)


@translates(aten.nan_to_num)
def nan_to_num(x, nan=None, posinf=None, neginf=None):
    """nan_to_num with torch's defaults (0, the dtype's largest and smallest)."""
    return jnp.nan_to_num(x, nan=0.0 if nan is None else nan, posinf=posinf, neginf=neginf)


@translates(aten.addcmul)
def addcmul(x, t1, t2, *, value=1):
    """addcmul: x + value·t1·t2."""
    return x + value * t1 * t2


@translates(aten.addcdiv)
def addcdiv(x, t1, t2, *, value=1):
    """addcdiv: x + value·t1/t2."""
    return x + value * t1 / t2


@translates(aten.lerp)
def lerp(x, end, weight):
    """lerp: x + weight·(end - x)."""
    return x + weight * (end - x)


# ---- reductions -------------------------------------------------------------------------------

@translates(aten.sum)
def sum_(x, dim=None, keepdim=False, *, dtype=None):
    """sum (.default, .dim_IntList): None or [] reduces every dim; integers sum to int64."""
    if isinstance(dim, torch.dtype):  # sum.default(x, dtype)
        dim, dtype = None, dim
    return reductions.sum_(x, dims_of(dim, x.ndim), keepdim, dtype=dtype)


@translates(aten.mean)
def mean(x, dim=None, keepdim=False, *, dtype=None):
    """mean (.default, .dim)."""
    if isinstance(dim, torch.dtype):
        dim, dtype = None, dim
    return reductions.mean(x, dims_of(dim, x.ndim), keepdim, dtype=dtype)


@translates(aten.prod)
def prod(x, dim=None, keepdim=False, *, dtype=None):
    """prod (.default, .dim_int)."""
    if isinstance(dim, torch.dtype):
        dim, dtype = None, dim
    result = jnp.prod(widened(x), axis=dims_of(dim, x.ndim), keepdims=keepdim)
    return result.astype(jdtype(dtype) or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else canonical(torch.int64)))


@translates(aten.amax)
def amax(x, dim=(), keepdim=False):
    """amax: [] reduces every dim."""
    return jnp.max(x, axis=dims_of(dim, x.ndim), keepdims=keepdim)


@translates(aten.amin)
def amin(x, dim=(), keepdim=False):
    """amin."""
    return jnp.min(x, axis=dims_of(dim, x.ndim), keepdims=keepdim)


@translates(aten.max)
def max_(x, dim=None, keepdim=False):
    """max (.default: the largest value; .dim: (values, indices))."""
    if dim is None:
        return jnp.max(x)
    return jnp.max(x, axis=dim, keepdims=keepdim), jnp.argmax(x, axis=dim, keepdims=keepdim)


@translates(aten.min)
def min_(x, dim=None, keepdim=False):
    """min (.default, .dim)."""
    if dim is None:
        return jnp.min(x)
    return jnp.min(x, axis=dim, keepdims=keepdim), jnp.argmin(x, axis=dim, keepdims=keepdim)


@translates(aten.argmax)
def argmax(x, dim=None, keepdim=False):
    """argmax (of the flattened array without `dim`)."""
    return jnp.argmax(x, axis=dim, keepdims=keepdim) if dim is not None else jnp.argmax(x.reshape(-1))


@translates(aten.argmin)
def argmin(x, dim=None, keepdim=False):
    """argmin."""
    return jnp.argmin(x, axis=dim, keepdims=keepdim) if dim is not None else jnp.argmin(x.reshape(-1))


@translates(aten.all)
def all_(x, dim=None, keepdim=False):
    """all (.default, .dim, .dims)."""
    return jnp.all(x, axis=dims_of(dim, x.ndim), keepdims=keepdim)


@translates(aten.any)
def any_(x, dim=None, keepdim=False):
    """any (.default, .dim, .dims)."""
    return jnp.any(x, axis=dims_of(dim, x.ndim), keepdims=keepdim)


def _correction(correction, unbiased=None):
    return 1 if correction is None and unbiased is None else (int(unbiased) if correction is None else correction)


@translates(aten.var)
def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """var (.correction, .dim)."""
    if isinstance(dim, bool):  # var.default(x, unbiased)
        dim, unbiased = None, dim
    return jnp.var(widened(x), axis=dims_of(dim, x.ndim), ddof=_correction(correction, unbiased), keepdims=keepdim).astype(x.dtype)


@translates(aten.std)
def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """std (.correction, .dim)."""
    return jnp.sqrt(var(x, dim, unbiased, keepdim, correction=correction))


@translates(aten.var_mean)
def var_mean(x, dim=None, *, correction=None, keepdim=False):
    """var_mean.correction: (variance, mean)."""
    axis = dims_of(dim, x.ndim)
    wide = widened(x)
    return (jnp.var(wide, axis=axis, ddof=_correction(correction), keepdims=keepdim).astype(x.dtype),
            jnp.mean(wide, axis=axis, keepdims=keepdim).astype(x.dtype))


@translates(aten.logsumexp)
def logsumexp(x, dim, keepdim=False):
    """logsumexp."""
    return reductions.logsumexp(x, dims_of(dim, x.ndim), keepdim)


@translates(aten.cumsum)
def cumsum(x, dim, *, dtype=None):
    """cumsum (integers sum to int64)."""
    if dtype is None and not jnp.issubdtype(x.dtype, jnp.floating):
        dtype = torch.int64
    return jnp.cumsum(widened(x), axis=dim).astype(jdtype(dtype) or x.dtype)


@translates(aten.cumprod)
def cumprod(x, dim, *, dtype=None):
    """cumprod."""
    return jnp.cumprod(widened(x), axis=dim).astype(jdtype(dtype) or x.dtype)


@translates(aten.linalg_vector_norm)
def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """linalg_vector_norm."""
    wide = widened(x)
    axis = dims_of(dim, x.ndim)
    if ord == float("inf"):
        result = jnp.max(jnp.abs(wide), axis=axis, keepdims=keepdim)
    elif ord == 2:
        result = jnp.sqrt(jnp.sum(jnp.square(wide), axis=axis, keepdims=keepdim))
    else:
        result = jnp.sum(jnp.abs(wide) ** ord, axis=axis, keepdims=keepdim) ** (1 / ord)
    return result.astype(jdtype(dtype) or x.dtype)


# ---- softmax, normalisation --------------------------------------------------------------------

@translates(aten._softmax)
def softmax(x, dim, half_to_float=False):
    """_softmax."""
    return jax.nn.softmax(widened(x), axis=dim).astype(jnp.float32 if half_to_float else x.dtype)


@translates(aten._log_softmax)
def log_softmax(x, dim, half_to_float=False):
    """_log_softmax."""
    return jax.nn.log_softmax(widened(x), axis=dim).astype(jnp.float32 if half_to_float else x.dtype)


def masked_rows_softmax(scores, axis):
    """softmax along `axis`, 0 where every score of the row is -inf (as torch's _safe_softmax); the
    masked rows are replaced before the softmax, so no NaN reaches the gradient."""
    empty = jnp.all(scores == -jnp.inf, axis=axis, keepdims=True)
    safe = jnp.where(empty, 0.0, scores)
    return jnp.where(empty, 0.0, jax.nn.softmax(safe, axis=axis))


@translates(aten._safe_softmax)
def safe_softmax(x, dim, dtype=None):
    """_safe_softmax: softmax, 0 for a row masked whole."""
    return masked_rows_softmax(widened(x), dim).astype(jdtype(dtype) or x.dtype)


@translates(aten.native_layer_norm)
def native_layer_norm(x, normalized_shape, weight, bias, eps):
    """native_layer_norm: (output, mean, rstd)."""
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    wide = widened(x)
    mu = jnp.mean(wide, axis=axes, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(wide - mu), axis=axes, keepdims=True) + eps)
    return norms.layer_norm(x, normalized_shape, weight, bias, eps), mu, rstd


@translates(aten.native_group_norm)
def native_group_norm(x, weight, bias, n, c, hxw, group, eps):
    """native_group_norm: (output, mean (N, G), rstd (N, G))."""
    grouped = widened(x).reshape(x.shape[0], group, -1)
    mu = jnp.mean(grouped, axis=-1)
    rstd = jax.lax.rsqrt(jnp.var(grouped, axis=-1) + eps)
    return norms.group_norm(x, group, weight, bias, eps), mu, rstd


@translates(aten._native_batch_norm_legit_no_training)
def batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps):
    """_native_batch_norm_legit_no_training: normalised by the running statistics."""
    return norms.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps), None, None


@translates(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional)
def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, *rest):
    """native_batch_norm: with the running statistics only; batch statistics are refused."""
    if not isinstance(running_mean, jax.Array) or training is True:
        raise Unsupported("batch normalization with batch statistics (BatchNorm in training mode) couples the samples "
                          "of a batch; put the model in eval mode (model.eval())", method="jax", layer="BatchNorm")
    return batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps)


# ---- products, attention ----------------------------------------------------------------------

@translates(aten.mm, aten.bmm, aten.matmul, aten.dot, aten.mv)
def mm(x, other):
    """mm / bmm / matmul / dot / mv: half precision accumulated in float32, rounded once."""
    return matmul.matmul(x, other)


@translates(aten.addmm, aten.baddbmm, aten.addmv)
def addmm(bias, x, other, *, beta=1, alpha=1):
    """addmm / baddbmm / addmv: beta·bias + alpha·(x @ other), the bias added to the float32 accumulator."""
    product = jnp.matmul(x, other, preferred_element_type=accumulator(x, other))
    product = product if alpha == 1 else alpha * product
    result = product + (bias if beta == 1 else beta * bias) if beta != 0 else product
    return result.astype(jnp.result_type(x, other))


def attention(query, key, value, mask=None, is_causal=False, scale=None):
    """(output, logsumexp) of softmax(q·kᵀ·scale + mask)·v: a boolean mask keeps True, a float one is
    added; a row masked whole gives 0 (as torch's kernels), grouped-query heads are repeated."""
    if key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = jnp.repeat(key, groups, axis=-3), jnp.repeat(value, groups, axis=-3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = widened(matmul.matmul(query, jnp.swapaxes(key, -2, -1))) * scale
    if is_causal:
        causal = jnp.tril(jnp.ones((query.shape[-2], key.shape[-2]), dtype=bool))
        scores = jnp.where(causal, scores, -jnp.inf)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf) if mask.dtype == jnp.bool_ else scores + widened(mask)
    weights = masked_rows_softmax(scores, -1)
    empty = jnp.all(scores == -jnp.inf, axis=-1)
    lse = jnp.where(empty, -jnp.inf, jax.nn.logsumexp(jnp.where(empty[..., None], 0.0, scores), axis=-1))
    return matmul.matmul(weights.astype(value.dtype), value), lse


def _no_dropout(dropout_p):
    if dropout_p:
        raise Unsupported(
            f"scaled_dot_product_attention with dropout_p={dropout_p} draws random masks that cannot match torch's; "
            "put the model in eval mode (model.eval())", method="jax")


@translates(aten._scaled_dot_product_flash_attention_for_cpu)
def sdpa_flash_cpu(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    """_scaled_dot_product_flash_attention_for_cpu: (output, logsumexp)."""
    _no_dropout(dropout_p)
    return attention(query, key, value, attn_mask, is_causal, scale)


@translates(aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention)
def sdpa_with_bias(query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *rest, scale=None):
    """_scaled_dot_product_efficient/cudnn_attention: (output, logsumexp, the rest unused)."""
    _no_dropout(dropout_p)
    return attention(query, key, value, attn_bias, is_causal, scale)


@translates(aten._scaled_dot_product_flash_attention)
def sdpa_flash(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    """_scaled_dot_product_flash_attention (CUDA): (output, logsumexp, the rest unused)."""
    _no_dropout(dropout_p)
    return attention(query, key, value, None, is_causal, scale)


@translates(aten._scaled_dot_product_attention_math)
def sdpa_math(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, dropout_mask=None, *, scale=None,
              enable_gqa=False):
    """_scaled_dot_product_attention_math: (output, attention weights)."""
    _no_dropout(dropout_p)
    return attention(query, key, value, attn_mask, is_causal, scale)[0], None


# ---- indexing ---------------------------------------------------------------------------------

@translates(aten.embedding)
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """embedding: rows of `weight` (NaN for an index out of range, where torch raises); the
    `padding_idx` row passes no gradient, as torch's backward."""
    return layers.embedding(indices, weight, None if padding_idx == -1 else padding_idx,
                            scale_grad_by_freq=scale_grad_by_freq)


def _full_index(indices):
    return tuple(slice(None) if i is None else i for i in indices)


@translates(aten.index)
def index(x, indices):
    """index.Tensor: advanced indexing with integer arrays (None keeps a dim whole)."""
    return x[_full_index(indices)]


@translates(aten.index_put)
def index_put(x, indices, values, accumulate=False):
    """index_put: values written (or added) at integer indices; a boolean mask as the only index
    selects with `where`."""
    if len(indices) == 1 and indices[0] is not None and indices[0].dtype == jnp.bool_:
        mask = indices[0].reshape(indices[0].shape + (1,) * (x.ndim - indices[0].ndim))
        if values.size != 1:
            raise Unsupported("index_put with a boolean mask and more than one value (x[mask] = tensor) consumes as many "
                              "values as the mask selects, a shape that depends on the values", method="jax")
        value = values.reshape(()).astype(x.dtype)
        return jnp.where(mask, x + value, x) if accumulate else jnp.where(mask, value, x)
    at = x.at[_full_index(indices)]
    return at.add(values) if accumulate else at.set(values.astype(x.dtype))


@translates(aten.index_select)
def index_select(x, dim, index_):
    """index_select."""
    return jnp.take(x, index_, axis=dim)


def _grid(index_, dim):
    grid = list(jnp.indices(index_.shape, sparse=True))
    grid[dim] = index_
    return tuple(grid)


@translates(aten.gather)
def gather(x, dim, index_, *, sparse_grad=False):
    """gather: x[..., index, ...] along `dim` (index may be smaller than x in the other dims)."""
    return x[_grid(index_, dim % x.ndim)]


@translates(aten.scatter)
def scatter(x, dim, index_, src, reduce=None):
    """scatter (.src, .value): values written at index along `dim`."""
    if reduce is not None:
        raise Unsupported(f"scatter with reduce={reduce!r} has no JAX translation", method="jax")
    grid = _grid(index_, dim % x.ndim)
    values = src[tuple(slice(0, n) for n in index_.shape)] if hasattr(src, "shape") and src.ndim else src
    return x.at[grid].set(jnp.asarray(values).astype(x.dtype))


@translates(aten.scatter_add)
def scatter_add(x, dim, index_, src):
    """scatter_add."""
    grid = _grid(index_, dim % x.ndim)
    return x.at[grid].add(src[tuple(slice(0, n) for n in index_.shape)].astype(x.dtype))


@translates(aten.select_scatter)
def select_scatter(x, src, dim, index_):
    """select_scatter: `src` written into the slice at `index` along `dim`."""
    where_ = [slice(None)] * x.ndim
    where_[dim] = index_ % x.shape[dim]
    return x.at[tuple(where_)].set(src.astype(x.dtype))


@translates(aten.slice_scatter)
def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    """slice_scatter: `src` written into x[..., start:end:step, ...]."""
    where_ = [slice(None)] * x.ndim
    where_[dim] = slice(start, end, step)
    return x.at[tuple(where_)].set(src.astype(x.dtype))


@translates(aten.diagonal_scatter)
def diagonal_scatter(x, src, offset=0, dim1=0, dim2=1):
    """diagonal_scatter: `src` written onto the diagonal."""
    n = src.shape[-1]
    rows = jnp.arange(n) + max(-offset, 0)
    cols = jnp.arange(n) + max(offset, 0)
    moved = jnp.moveaxis(x, (dim1, dim2), (-2, -1))
    moved = moved.at[..., rows, cols].set(src.astype(x.dtype))
    return jnp.moveaxis(moved, (-2, -1), (dim1, dim2))


# ---- convolution, pooling ----------------------------------------------------------------------

@translates(aten.convolution)
def convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """convolution (not transposed)."""
    if transposed:
        raise Unsupported("transposed convolution has no JAX translation in the jax method", method="jax",
                          layer="ConvTranspose")
    return conv_ops.conv(x, weight, bias, tuple(stride), tuple((p, p) for p in padding), tuple(dilation), groups)


@translates(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d)
def max_pool(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_poolNd (n from the kernel's length)."""
    n = len(kernel_size)
    return pooling.max_pool(x, kernel_size, tuple(stride) or None, padding, dilation, ceil_mode, n=n)


@translates(aten.max_pool2d_with_indices, aten.max_pool3d_with_indices)
def max_pool_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_poolNd_with_indices: (values, unused indices)."""
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode), None


@translates(aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d)
def avg_pool(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """avg_poolNd."""
    n = len(kernel_size)
    return pooling.avg_pool(x, kernel_size, tuple(stride) or None, padding, ceil_mode, count_include_pad,
                            divisor_override, n=n)


@translates(aten._adaptive_avg_pool2d, aten.adaptive_avg_pool1d, aten._adaptive_avg_pool3d, aten.adaptive_avg_pool2d)
def adaptive_avg_pool(x, output_size):
    """adaptive average pooling (n from the output size's length)."""
    return pooling.adaptive_avg_pool(x, tuple(output_size), n=len(output_size))


# ---- losses -----------------------------------------------------------------------------------

REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


@translates(aten.nll_loss_forward, aten.nll_loss2d_forward)
def nll_loss_forward(x, target, weight, reduction, ignore_index):
    """nll_loss_forward: (loss, total weight); a class out of range gives NaN (torch raises)."""
    loss = losses.negative_log_likelihood(x, target, weight, ignore_index, REDUCTIONS[reduction], 0.0)
    valid = target != ignore_index
    class_weights = jnp.ones((x.shape[losses.class_axis(x)],), x.dtype) if weight is None else weight
    total = jnp.sum(class_weights.at[jnp.where(valid, target, 0)].get(mode="fill", fill_value=0) * valid)
    return loss.astype(x.dtype), total.astype(x.dtype)


@translates(aten.binary_cross_entropy_with_logits)
def bce_with_logits(x, target, weight=None, pos_weight=None, reduction=1):
    """binary_cross_entropy_with_logits."""
    return losses.binary_cross_entropy_with_logits(x, target, weight, reduction=REDUCTIONS[reduction],
                                                   pos_weight=pos_weight)


@translates(aten.binary_cross_entropy)
def bce(x, target, weight=None, reduction=1):
    """binary_cross_entropy: logs clamped at -100, as torch."""
    p, y = widened(x), widened(target)
    out = -(y * jnp.maximum(jnp.log(p), -100) + (1 - y) * jnp.maximum(jnp.log1p(-p), -100))
    out = out if weight is None else out * widened(weight)
    return losses.reduced(out, REDUCTIONS[reduction]).astype(x.dtype)


@translates(aten.mse_loss)
def mse_loss(x, target, reduction=1):
    """mse_loss."""
    return losses.mse_loss(x, target, reduction=REDUCTIONS[reduction])


@translates(aten.smooth_l1_loss)
def smooth_l1_loss(x, target, reduction=1, beta=1.0):
    """smooth_l1_loss."""
    d = jnp.abs(widened(x) - widened(target))
    out = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta) if beta > 0 else d
    return losses.reduced(out, REDUCTIONS[reduction]).astype(x.dtype)


@translates(aten.huber_loss)
def huber_loss(x, target, reduction=1, delta=1.0):
    """huber_loss."""
    d = jnp.abs(widened(x) - widened(target))
    out = jnp.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
    return losses.reduced(out, REDUCTIONS[reduction]).astype(x.dtype)


# ---- dropout ----------------------------------------------------------------------------------

@translates(aten.native_dropout)
def native_dropout(x, p, train):
    """native_dropout: the identity where it is one (p = 0 or not training); refused otherwise."""
    if train and p > 0:
        raise Unsupported(f"dropout with p={p} in training mode draws random masks that cannot match torch's; "
                          "put the model in eval mode (model.eval()) or use p=0", method="jax", layer="Dropout")
    return x, jnp.ones(x.shape, bool)


def value_read(op) -> bool:
    """Whether `op` hands a tensor's value to Python (`.item()`, `bool(tensor)`, `torch.equal`)."""
    return op in VALUE_READS


VALUE_READS = frozenset({aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default,
                         aten.equal.default})


def random(op) -> bool:
    """Whether `op` draws random numbers."""
    return torch.Tag.nondeterministic_seeded in getattr(op, "tags", ())


def data_dependent_shape(op) -> str | None:
    """Why `op`'s output shape depends on the values, or None."""
    name = getattr(getattr(op, "overloadpacket", op), "__name__", str(op))
    return DATA_DEPENDENT_SHAPES.get(name)


__all__ = ["ATEN", "DATA_DEPENDENT_SHAPES", "VALUE_READS", "data_dependent_shape", "lookup", "random", "value_read"]
