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

from .numerics import accumulator
from .vocabulary import translates, translates_layer

PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def ntuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def conv_padding(padding, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(low, high) per spatial dim for numeric, "valid" or "same" padding, as torch pads."""
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in ntuple(padding, len(kernel)))


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch's F.convNd; `padding` may also be explicit (low, high) pairs."""
    n = weight.ndim - 2
    unbatched = x.ndim == n + 1
    x = x[None] if unbatched else x
    dilation = ntuple(dilation, n)
    pads = padding if isinstance(padding, tuple) and isinstance(padding[0], tuple) else (
        conv_padding(padding, weight.shape[2:], dilation))
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
    if padding_mode != "zeros":
        x, pads = pad_spatial(x, pads, padding_mode), tuple((0, 0) for _ in pads)
    return conv(x, weights["weight"], weights.get("bias"), stride, pads, dilation, groups)


@translates_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_layer(module: nn.modules.conv._ConvNd):
    pads = conv_padding(module.padding, module.kernel_size, module.dilation)
    return partial(apply_conv, stride=tuple(module.stride), pads=pads, dilation=tuple(module.dilation),
                   groups=module.groups, padding_mode=module.padding_mode)


@translates(F.pad)
def pad(x, pad, mode="constant", value=None):
    pairs = tuple((pad[i], pad[i + 1]) for i in range(0, len(pad), 2))[::-1]
    if mode != "constant":
        return pad_spatial(x, pairs, mode)
    config = [(0, 0, 0)] * (x.ndim - len(pairs)) + [(low, high, 0) for low, high in pairs]
    return jax.lax.pad(x, jnp.asarray(value or 0, dtype=x.dtype), config)
