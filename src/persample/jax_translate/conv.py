"""Convolutions and padding in JAX: F.conv1d/2d/3d, nn.Conv1d/2d/3d (every padding mode), F.pad.

A convolution is `lax.conv_general_dilated` in torch's NC(D)HW / OI(D)HW layout. torch pads
"same" with the odd element on the right, and pads non-zero modes explicitly before a zero-padded
convolution; both are reproduced here.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import torch.nn.functional as F
from torch import nn

from ..layers import conv_padding_amounts, padding_amounts
from .numerics import accumulator
from .vocabulary import translates, translates_layer

PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def ntuple(value, n: int) -> tuple[int, ...]:
    """`value` as an n-tuple: a tuple or list as it is, a single int repeated n times."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch's F.convNd; `padding` may also be explicit (low, high) pairs."""
    n = weight.ndim - 2
    unbatched = x.ndim == n + 1
    x = x[None] if unbatched else x
    dilation = ntuple(dilation, n)
    pads = padding if isinstance(padding, tuple) and isinstance(padding[0], tuple) else (
        conv_padding_amounts(padding, weight.shape[2:], dilation))
    spatial = "DHW"[-n:]
    y = jax.lax.conv_general_dilated(
        x, weight, ntuple(stride, n), pads, rhs_dilation=dilation, feature_group_count=groups,
        dimension_numbers=("NC" + spatial, "OI" + spatial, "NC" + spatial),
        preferred_element_type=accumulator(x, weight),
    ).astype(jnp.result_type(x, weight))
    if bias is not None:
        y = y + bias.reshape((-1,) + (1,) * n)
    return y[0] if unbatched else y


translates(F.conv1d, F.conv2d, F.conv3d)(conv)


def pad_spatial(x, pads: tuple[tuple[int, int], ...], mode: str):
    """Pad the trailing len(pads) dims with a torch padding mode other than zeros."""
    full = ((0, 0),) * (x.ndim - len(pads)) + tuple(pads)
    return jnp.pad(x, full, mode=PAD_MODES[mode])


def apply_conv(weights, x, *, stride, pads, dilation, groups, padding_mode):
    """An nn.ConvNd's forward on `weights` ({'weight', optional 'bias'}): a non-zero `padding_mode` pads
    explicitly first; returns (N, C_out, *spatial_out).
    """
    if padding_mode != "zeros":
        x, pads = pad_spatial(x, pads, padding_mode), tuple((0, 0) for _ in pads)
    return conv(x, weights["weight"], weights.get("bias"), stride, pads, dilation, groups)


@translates_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_layer(module: nn.modules.conv._ConvNd):
    """The translation of an nn.Conv1d/2d/3d: `apply_conv` with the module's stride, padding amounts, dilation,
    groups and padding mode bound.
    """
    pads = padding_amounts(module)
    return partial(apply_conv, stride=tuple(module.stride), pads=pads, dilation=tuple(module.dilation),
                   groups=module.groups, padding_mode=module.padding_mode)


@translates(F.pad)
def pad(x, pad, mode="constant", value=None):
    """torch's F.pad: `pad` lists (low, high) pairs from the last dim backwards; mode constant (with `value`,
    default 0), reflect, replicate or circular. Returns the padded array.
    """
    pairs = tuple((pad[i], pad[i + 1]) for i in range(0, len(pad), 2))[::-1]
    if mode != "constant":
        return pad_spatial(x, pairs, mode)
    config = [(0, 0, 0)] * (x.ndim - len(pairs)) + [(low, high, 0) for low, high in pairs]
    return jax.lax.pad(x, jnp.asarray(value or 0, dtype=x.dtype), config)
