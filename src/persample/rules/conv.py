"""Conv1d/2d/3d with stride, padding (numbers, "same", "valid", any padding_mode), dilation, groups.

Indices: n batch, g group, c input channels per group, o output channels per group,
l output positions (flattened), k kernel offsets (flattened).
gW[n,g,o,c,k] = Σ_l g[n,g,o,l] · unfold(x)[n,g,c,l,k];  gb[n,o] = Σ_l g[n,o,l]
where unfold(x)[.., l, k] is the padded input under kernel offset k at output position l (im2col).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_rule


def padded(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """`x` padded exactly as the module pads it, so the convolution itself uses padding 0."""
    amounts: list[int] = []
    for dim in reversed(range(len(module.kernel_size))):
        if module.padding == "valid":
            left = right = 0
        elif module.padding == "same":
            total = module.dilation[dim] * (module.kernel_size[dim] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = module.padding[dim]
        amounts += [left, right]
    if not any(amounts):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, amounts, mode=mode)


def unfold(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """im2col as a view: (n, C, *spatial) -> (n, C, *out_positions, *kernel_offsets)."""
    x = padded(module, x)
    dims = len(module.kernel_size)
    for d in range(dims):
        span = module.dilation[d] * (module.kernel_size[d] - 1) + 1
        x = x.unfold(2 + d, span, module.stride[d])
    dilate = (slice(None),) * (2 + dims) + tuple(slice(None, None, s) for s in module.dilation)
    return x[dilate]


def _conv_fn(dims: int):
    return (F.conv1d, F.conv2d, F.conv3d)[dims - 1]


class ConvRule:
    @staticmethod
    def grad_sample(module: nn.modules.conv._ConvNd, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        n, groups = x.shape[0], module.groups
        cols = unfold(module, x)  # (n, C, *L, *K)
        c_per_group = module.in_channels // groups
        cols = cols.reshape(n, groups, c_per_group, grad_out[0, 0].numel(), -1)
        g = grad_out.reshape(n, groups, module.out_channels // groups, -1)
        weight = torch.einsum("ngol,ngclk->ngock", g, cols)
        grads = {"weight": weight.reshape(n, *module.weight.shape)}
        if module.bias is not None:
            grads["bias"] = grad_out.reshape(n, module.out_channels, -1).sum(-1)
        return grads

    @staticmethod
    def expanded_forward(module: nn.modules.conv._ConvNd, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        # One grouped convolution over the whole batch: sample n's channels form groups
        # n*G .. n*G+G-1 and meet only sample n's copy of the weight.
        n, dims = x.shape[0], len(module.kernel_size)
        weight = weights["weight"]
        xp = padded(module, x)
        out = _conv_fn(dims)(
            xp.reshape(1, n * xp.shape[1], *xp.shape[2:]),
            weight.reshape(n * weight.shape[1], *weight.shape[2:]),
            stride=module.stride,
            dilation=module.dilation,
            groups=n * module.groups,
        )
        out = out.reshape(n, module.out_channels, *out.shape[2:])
        if "bias" in weights:
            out = out + weights["bias"].reshape(n, module.out_channels, *([1] * dims))
        return out


for _layer in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_rule(_layer)(ConvRule)
