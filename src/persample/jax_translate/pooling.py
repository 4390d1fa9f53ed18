"""Pooling in JAX: max and average pooling (1-3 d, ceil_mode, padding) and adaptive averages.

Windows are `lax.reduce_window` over the trailing spatial dims. torch's ceil_mode adds padding on
the right only while a window still starts inside the input; its average divides by the window
clipped to the padded input (count_include_pad) or to the real input.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch.nn.functional as F
from torch import nn

from ..errors import Unsupported
from .conv import ntuple
from .numerics import widened
from .vocabulary import translates, translates_layer


def window_padding(length: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> tuple[int, int]:
    """(low, high) padding of one dim; high grows for ceil_mode's extra output."""
    span = dilation * (kernel - 1) + 1
    count = (length + 2 * pad - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (count - 1) * stride >= length + pad:
        count -= 1
    return pad, max(pad, (count - 1) * stride + span - length - pad)


def windows(x, n, kernel_size, stride, padding, dilation, ceil_mode):
    """reduce_window arguments over the trailing `n` dims of `x`."""
    kernel = ntuple(kernel_size, n)
    stride = ntuple(stride or kernel, n)
    pad, dilation = ntuple(padding, n), ntuple(dilation, n)
    lead = x.ndim - n
    pads = [window_padding(x.shape[lead + i], kernel[i], stride[i], pad[i], dilation[i], ceil_mode) for i in range(n)]
    ones = (1,) * lead
    return ones + kernel, ones + stride, ((0, 0),) * lead + tuple(pads), ones + dilation


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False, *, n):
    """F.max_poolNd over the trailing `n` dims (padding counts as -inf, ceil_mode as torch). Raises
    `Unsupported` for return_indices=True.
    """
    if return_indices:
        raise Unsupported("max pooling with return_indices=True has no JAX translation", method="jax")
    window, strides, pads, dilation = windows(x, n, kernel_size, stride, padding, dilation, ceil_mode)
    lowest = np.array(-np.inf, x.dtype)  # a concrete identity, so JAX differentiates the max
    return jax.lax.reduce_window(x, lowest, jax.lax.max, window, strides, pads, window_dilation=dilation)


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None, *, n):
    """F.avg_poolNd over the trailing `n` dims: window sums divided by `divisor_override`, or by the window
    clipped to the padded (count_include_pad) or real input, as torch; summed in at least float32,
    returned in x's dtype.
    """
    window, strides, pads, _ = windows(x, n, kernel_size, stride, padding, 1, ceil_mode)
    wide = widened(x)
    total = jax.lax.reduce_window(wide, np.zeros((), wide.dtype), jax.lax.add, window, strides, pads)
    if divisor_override:
        return (total / divisor_override).astype(x.dtype)
    lead = x.ndim - n
    spatial, shape = pads[lead:], x.shape[lead:]
    if count_include_pad:  # padding counts, ceil_mode's overhang past it does not
        ones = np.ones([size + 2 * low for size, (low, _) in zip(shape, spatial)], np.float32)
        spatial = tuple((0, high - low) for low, high in spatial)
    else:
        ones = np.ones(shape, np.float32)
    counts = jax.lax.reduce_window(ones, np.float32(0), jax.lax.add,
                                   window[lead:], strides[lead:], spatial)
    return (total / counts).astype(x.dtype)


for _n, _max, _avg in ((1, F.max_pool1d, F.avg_pool1d), (2, F.max_pool2d, F.avg_pool2d), (3, F.max_pool3d, F.avg_pool3d)):
    translates(_max)(partial(max_pool, n=_n))
    translates(_avg)(partial(avg_pool, n=_n))


def apply_pool(weights, x, *, pool, n, options):
    """A pooling module's forward: `pool(x, **options)` over `n` spatial dims; `weights` is unused."""
    return pool(x, **dict(options), n=n)


POOL_DIMS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


@translates_layer(*POOL_DIMS)
def pool_layer(module: nn.Module):
    """The translation of an nn.MaxPoolNd / AvgPoolNd: `apply_pool` with the module's settings bound."""
    is_max = isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
    names = ("kernel_size", "stride", "padding", "ceil_mode") + (
        ("dilation", "return_indices") if is_max else ("count_include_pad", "divisor_override"))
    options = tuple((name, getattr(module, name, None)) for name in names)
    options = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in options)
    return partial(apply_pool, pool=max_pool if is_max else avg_pool, n=POOL_DIMS[type(module)], options=options)


def averaging_matrix(length: int, out: int) -> np.ndarray:
    """(out, length): row i averages torch's adaptive bin [floor(i L / O), ceil((i+1) L / O))."""
    matrix = np.zeros((out, length))
    for i in range(out):
        start, end = (i * length) // out, math.ceil((i + 1) * length / out)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def adaptive_avg_pool(x, output_size, *, n):
    """F.adaptive_avg_poolNd: each of the trailing `n` dims averaged into `output_size` bins [⌊iL/O⌋,
    ⌈(i+1)L/O⌉) as torch; in x's dtype.
    """
    wide = widened(x)
    targets = ntuple(output_size, n)
    for i, out in enumerate(targets):
        axis = x.ndim - n + i
        if out is None or out == x.shape[axis]:
            continue
        if out == 1:
            wide = jnp.mean(wide, axis=axis, keepdims=True)
        else:
            matrix = jnp.asarray(averaging_matrix(x.shape[axis], out), wide.dtype)
            wide = jnp.moveaxis(jnp.tensordot(wide, matrix, axes=([axis], [1])), -1, axis)
    return wide.astype(x.dtype)


ADAPTIVE_DIMS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
for _n, _fn in ((1, F.adaptive_avg_pool1d), (2, F.adaptive_avg_pool2d), (3, F.adaptive_avg_pool3d)):
    translates(_fn)(partial(adaptive_avg_pool, n=_n))


def apply_adaptive(weights, x, *, output_size, n):
    """An nn.AdaptiveAvgPoolNd's forward: `adaptive_avg_pool`; `weights` is unused."""
    return adaptive_avg_pool(x, output_size, n=n)


@translates_layer(*ADAPTIVE_DIMS)
def adaptive_layer(module: nn.Module):
    """The translation of an nn.AdaptiveAvgPool1d/2d/3d: `apply_adaptive` with its output size bound."""
    size = module.output_size
    return partial(apply_adaptive, output_size=tuple(size) if isinstance(size, list) else size, n=ADAPTIVE_DIMS[type(module)])
