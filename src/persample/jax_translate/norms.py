"""Normalisation layers in JAX: LayerNorm, GroupNorm, InstanceNorm, RMSNorm, eval-mode BatchNorm.

Each normalises within one sample except BatchNorm, which is translated only where it uses its
running statistics (eval mode with tracked stats): with batch statistics it couples samples.
Statistics are computed in float32 for half-precision inputs, as torch's kernels do.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import torch.nn.functional as F
from torch import nn

from ..errors import Unsupported
from ..layers import uses_running_stats
from .numerics import widened
from .vocabulary import translates, translates_layer


def channel_shape(x, values):
    """`values` (C,) shaped to broadcast over (N, C, *spatial)."""
    return values.reshape((-1,) + (1,) * (x.ndim - 2))


def standardise(x, axes, eps):
    """(x - mean) / √(var + eps) over `axes` (biased variance), in at least float32; the caller rounds back."""
    wide = widened(x)
    mean = jnp.mean(wide, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(wide - mean), axis=axes, keepdims=True)
    return (wide - mean) * jax.lax.rsqrt(var + eps)


def affine(y, weight, bias, x):
    """Scale and shift in the standardised (wide) precision, then round to the input's dtype."""
    y = y if weight is None else y * weight
    y = y if bias is None else y + bias
    return y.astype(x.dtype)


@translates(F.layer_norm)
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm (Ba et al. 2016): standardised over the trailing `normalized_shape` dims, then scaled and
    shifted; in x's dtype.
    """
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    return affine(standardise(x, axes, eps), weight, bias, x)


@translates(F.group_norm)
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """F.group_norm (Wu & He 2018): (N, C, *) standardised within each of `num_groups` channel groups per
    sample, then per-channel scale and shift; in x's dtype.
    """
    grouped = x.reshape(x.shape[0], num_groups, -1)
    y = standardise(grouped, (2,), eps).reshape(x.shape)
    return affine(y, None if weight is None else channel_shape(x, weight), None if bias is None else channel_shape(x, bias), x)


@translates(F.rms_norm)
def rms_norm(x, normalized_shape, weight=None, eps=None):
    """F.rms_norm (Zhang & Sennrich 2019): x / √(mean(x²) + eps) over the trailing `normalized_shape` dims, eps
    by default the compute dtype's machine epsilon (as torch), then scaled; in x's dtype.
    """
    wide = widened(x)
    eps = float(jnp.finfo(wide.dtype).eps) if eps is None else eps  # torch: machine eps of the compute dtype
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    y = wide * jax.lax.rsqrt(jnp.mean(jnp.square(wide), axis=axes, keepdims=True) + eps)
    return affine(y, weight, None, x)


@translates(F.instance_norm)
def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """F.instance_norm (Ulyanov et al. 2016): (N, C, *) standardised per sample and channel over the spatial
    dims, or with the running statistics when `use_input_stats` is False; in x's dtype.
    """
    if use_input_stats:
        y = standardise(x, tuple(range(2, x.ndim)), eps)
    else:
        y = (widened(x) - channel_shape(x, running_mean)) * jax.lax.rsqrt(channel_shape(x, running_var) + eps)
    weight = None if weight is None else channel_shape(x, weight)
    return affine(y, weight, None if bias is None else channel_shape(x, bias), x)


@translates(F.batch_norm)
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """F.batch_norm with running statistics only (eval mode): (x - running_mean) / √(running_var + eps), scaled
    and shifted. Raises `Unsupported` for batch statistics, which couple the samples.
    """
    if training or running_mean is None:
        raise Unsupported(
            "batch_norm with batch statistics (training=True or no running stats) couples the "
            "samples, so per-sample gradients are undefined; use running statistics (eval mode "
            "with track_running_stats=True) or GroupNorm/LayerNorm", method="jax", layer="batch_norm")
    return instance_norm(x, running_mean, running_var, weight, bias, use_input_stats=False, eps=eps)


def apply_layer_norm(weights, x, *, normalized_shape, eps):
    """An nn.LayerNorm's forward on `weights` (optional 'weight', 'bias')."""
    return layer_norm(x, normalized_shape, weights.get("weight"), weights.get("bias"), eps)


def apply_group_norm(weights, x, *, num_groups, eps):
    """An nn.GroupNorm's forward on `weights` (optional 'weight', 'bias')."""
    return group_norm(x, num_groups, weights.get("weight"), weights.get("bias"), eps)


def apply_rms_norm(weights, x, *, normalized_shape, eps):
    """An nn.RMSNorm's forward on `weights` (optional 'weight')."""
    return rms_norm(x, normalized_shape, weights.get("weight"), eps)


def apply_instance_norm(weights, x, *, spatial_dims, use_input_stats, eps):
    """An nn.InstanceNormNd's (or eval-mode BatchNormNd's) forward on `weights` (affine parameters, running
    statistics); accepts an unbatched (C, *spatial) input.
    """
    unbatched = x.ndim == spatial_dims + 1
    y = instance_norm(x[None] if unbatched else x, weights.get("running_mean"), weights.get("running_var"),
                      weights.get("weight"), weights.get("bias"), use_input_stats, eps=eps)
    return y[0] if unbatched else y


@translates_layer(nn.LayerNorm)
def layer_norm_layer(module: nn.LayerNorm):
    """The translation of an nn.LayerNorm: `apply_layer_norm` with its shape and eps bound."""
    return partial(apply_layer_norm, normalized_shape=tuple(module.normalized_shape), eps=module.eps)


@translates_layer(nn.GroupNorm)
def group_norm_layer(module: nn.GroupNorm):
    """The translation of an nn.GroupNorm: `apply_group_norm` with its groups and eps bound."""
    return partial(apply_group_norm, num_groups=module.num_groups, eps=module.eps)


@translates_layer(nn.RMSNorm)
def rms_norm_layer(module: nn.RMSNorm):
    """The translation of an nn.RMSNorm: `apply_rms_norm` with its shape and eps bound."""
    return partial(apply_rms_norm, normalized_shape=tuple(module.normalized_shape), eps=module.eps)


INSTANCE_DIMS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
BATCH_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


@translates_layer(*INSTANCE_DIMS)
def instance_norm_layer(module: nn.modules.instancenorm._InstanceNorm):
    """The translation of an nn.InstanceNorm1d/2d/3d: `apply_instance_norm`, with input statistics unless it
    uses running ones.
    """
    dims = next(n for kind, n in INSTANCE_DIMS.items() if isinstance(module, kind))
    use_input_stats = not uses_running_stats(module)
    return partial(apply_instance_norm, spatial_dims=dims, use_input_stats=use_input_stats, eps=module.eps)


@translates_layer(*BATCH_DIMS)
def batch_norm_layer(module: nn.modules.batchnorm._BatchNorm):
    """The translation of an eval-mode nn.BatchNorm1d/2d/3d with running statistics: `apply_instance_norm` on
    those. Raises `Unsupported` in training mode or without tracked statistics.
    """
    if module.training or module.running_mean is None:
        raise Unsupported(
            f"{type(module).__name__} normalises with batch statistics here (training mode, or "
            "track_running_stats=False), which couples the samples; put it in eval mode with "
            "tracked running statistics, or replace it with GroupNorm", method="jax", layer=type(module).__name__)
    # BatchNorm1d also takes (N, C) input; instance_norm's channel broadcasting handles both
    return partial(apply_instance_norm, spatial_dims=-1, use_input_stats=False, eps=module.eps)
