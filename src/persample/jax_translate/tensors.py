"""Tensor plumbing in JAX with torch's meaning: shapes, indexing, joining, dtypes, creation.

Shapes are static under `jax.jit`, so `x.shape`, `x.size(1)` and the arithmetic on them are plain
Python integers while the program is traced; only tensors become JAX arrays.
"""
from __future__ import annotations

import builtins
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ..errors import Unsupported
from .numerics import jax_dtype
from .vocabulary import translates


def sizes(args) -> tuple:
    """torch's `f(*sizes)` or `f(sizes)` calling conventions, as one tuple."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def canonical(dtype) -> jnp.dtype:
    """A JAX dtype that exists in the current x64 mode (int64 becomes int32 without it)."""
    return jax.dtypes.canonicalize_dtype(jax_dtype(dtype))


def default_float() -> jnp.dtype:
    """The JAX dtype of torch's default float dtype (torch.get_default_dtype())."""
    return canonical(torch.get_default_dtype())


@translates(torch.reshape, "view", "reshape", view=True)
def reshape(x, *shape):
    """torch.reshape / Tensor.view / reshape to `shape` (given spread or as one sequence). Raises `Unsupported`
    for view(dtype).
    """
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        raise Unsupported("Tensor.view(dtype) reinterprets memory; the jax method has no translation for it", method="jax")
    return jnp.reshape(x, sizes(shape))


@translates(torch.flatten, "flatten", view=True)
def flatten(x, start_dim=0, end_dim=-1):
    """torch.flatten: dims start_dim..end_dim merged into one (a 0-d array becomes shape (1,))."""
    if x.ndim == 0:
        return x.reshape(1)
    start, end = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])


@translates(torch.unflatten, "unflatten", view=True)
def unflatten(x, dim, sizes):
    """torch.unflatten: dim `dim` split into `sizes`."""
    dim = dim % x.ndim
    return x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])


@translates(torch.transpose, torch.swapaxes, "transpose", "swapaxes", view=True)
def transpose(x, dim0, dim1):
    """torch.transpose / swapaxes: dims dim0 and dim1 exchanged."""
    return jnp.swapaxes(x, dim0, dim1)


@translates(torch.t, "t", view=True)
def t(x):
    """torch.t: a 2-d array transposed, a 0-d or 1-d one as it is."""
    return x.T if x.ndim == 2 else x


@translates(torch.permute, "permute", view=True)
def permute(x, *dims):
    """torch.permute: dims reordered as `dims`."""
    return jnp.transpose(x, sizes(dims))


@translates(torch.unsqueeze, "unsqueeze", view=True)
def unsqueeze(x, dim):
    """torch.unsqueeze: a dim of size 1 inserted at `dim`."""
    return jnp.expand_dims(x, dim)


@translates(torch.squeeze, "squeeze", view=True)
def squeeze(x, dim=None):
    """torch.squeeze: the size-1 dims among `dim` (all dims when None) removed; others are kept, as torch."""
    dims = range(x.ndim) if dim is None else (dim,) if isinstance(dim, int) else dim
    return jnp.squeeze(x, tuple(d for d in dims if x.shape[d] == 1))


@translates("expand", view=True)
def expand(x, *shape):
    """Tensor.expand: broadcast to `shape`, where -1 keeps a dim's size."""
    shape = sizes(shape)
    lead = len(shape) - x.ndim
    return jnp.broadcast_to(x, tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape)))


@translates("expand_as", view=True)
def expand_as(x, other):
    """Tensor.expand_as: broadcast to other's shape."""
    return jnp.broadcast_to(x, other.shape)


@translates("repeat")
def repeat(x, *repeats):
    """Tensor.repeat: the array tiled `repeats` times along each dim."""
    return jnp.tile(x, sizes(repeats))


@translates("contiguous", "clone", torch.clone)
def same(x, *args, **kwargs):
    """Tensor.contiguous / clone: x itself (JAX arrays are immutable values)."""
    return x


@translates("detach", torch.detach, view=True)
def detach(x):
    """Tensor.detach / torch.detach: x with its gradient stopped (lax.stop_gradient)."""
    return jax.lax.stop_gradient(x)


@translates(torch.cat, torch.concat, torch.concatenate)
def cat(tensors, dim=0):
    """torch.cat / concat: the arrays joined along `dim`."""
    return jnp.concatenate(tensors, axis=dim)


@translates(torch.stack)
def stack(tensors, dim=0):
    """torch.stack: the arrays stacked along a new dim `dim`."""
    return jnp.stack(tensors, axis=dim)


@translates(torch.split, "split", view=True)
def split(x, split_size_or_sections, dim=0):
    """torch.split: a tuple of pieces along `dim`, of `split_size_or_sections` each (the last may be shorter)
    or of the given sizes.
    """
    if isinstance(split_size_or_sections, int):
        bounds = range(split_size_or_sections, x.shape[dim], split_size_or_sections)
    else:
        bounds = np.cumsum(split_size_or_sections)[:-1].tolist()
    return tuple(jnp.split(x, list(bounds), axis=dim))


@translates(torch.chunk, "chunk", view=True)
def chunk(x, chunks, dim=0):
    """torch.chunk: `split` into pieces of ⌈size / chunks⌉ along `dim`."""
    return split(x, math.ceil(x.shape[dim] / chunks), dim)


@translates(torch.unbind, "unbind", view=True)
def unbind(x, dim=0):
    """torch.unbind: a tuple of the slices along `dim`."""
    return tuple(jnp.moveaxis(x, dim, 0))


@translates("size")
def size(x, dim=None):
    """Tensor.size: the shape as a tuple of Python ints, or one dim's size."""
    return tuple(x.shape) if dim is None else x.shape[dim]


@translates("dim")
def ndim(x):
    """Tensor.dim(): the number of dims (a Python int)."""
    return x.ndim


@translates(torch.numel, "numel")
def numel(x):
    """torch.numel: the number of elements (a Python int: shapes are static)."""
    return math.prod(x.shape)


ATTRIBUTES = {
    "shape": lambda x: tuple(x.shape), "ndim": lambda x: x.ndim, "dtype": lambda x: x.dtype,
    "T": lambda x: jnp.transpose(x), "mT": lambda x: jnp.swapaxes(x, -2, -1), "device": lambda x: None,
}


@translates(builtins.getattr)
def attribute(x, name):
    """getattr on a traced value: a tensor's shape, ndim, dtype, T, mT or device (None); other objects'
    attributes as they are. Raises `Unsupported` for another tensor attribute.
    """
    if not hasattr(x, "shape"):
        return getattr(x, name)
    if name not in ATTRIBUTES:
        raise Unsupported(f"the tensor attribute .{name} has no JAX translation (known: {', '.join(ATTRIBUTES)})", method="jax")
    return ATTRIBUTES[name](x)


@translates(operator.getitem, view=True)
def getitem(x, index):
    """Indexing (x[index]) with torch's meaning; list indices become arrays; a tuple or shape is indexed as it
    is.
    """
    if not hasattr(x, "shape"):  # a tuple of outputs, or a shape
        return x[index]
    items = index if isinstance(index, tuple) else (index,)
    return x[tuple(jnp.asarray(i) if isinstance(i, list) else i for i in items)]


def to_dtype(dtype):
    """The translation of Tensor.float/double/half/bfloat16/long/int/bool: x cast to `dtype`."""
    def convert(x, *args, **kwargs):
        return x.astype(canonical(dtype))
    convert.__qualname__ = convert.__name__ = f"to_{str(dtype).removeprefix('torch.')}"
    return convert


for _method, _dtype in {"float": torch.float32, "double": torch.float64, "half": torch.float16,
                        "bfloat16": torch.bfloat16, "long": torch.int64, "int": torch.int32,
                        "bool": torch.bool}.items():
    translates(_method)(to_dtype(_dtype))


@translates("to")
def to(x, *args, dtype=None, **kwargs):
    """Tensor.to: x cast to the dtype given (as an argument, `dtype=`, or another tensor's); devices are
    ignored.
    """
    for arg in args:
        if isinstance(arg, torch.dtype) or isinstance(arg, jnp.dtype):
            dtype = arg
        elif hasattr(arg, "dtype"):  # to(other): other's dtype
            dtype = arg.dtype
    return x if dtype is None else x.astype(canonical(dtype))


@translates("type_as")
def type_as(x, other):
    """Tensor.type_as: x cast to other's dtype."""
    return x.astype(other.dtype)
