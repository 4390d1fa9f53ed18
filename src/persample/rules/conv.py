"""Conv1d/2d/3d with stride, padding (numbers, "same", "valid", any padding_mode), dilation, groups.

Indices: n batch, g group, c input channels per group, o output channels per group,
l output positions (flattened), k kernel offsets (flattened).
gW[n,g,o,c,k] = Σ_l g[n,g,o,l] · unfold(x)[n,g,c,l,k];  gb[n,o] = Σ_l g[n,o,l]
where unfold(x)[.., l, k] is the padded input under kernel offset k at output position l (im2col:
Rochette et al. 2019, "Efficient Per-Example Gradient Computations in Convolutional Neural
Networks", §3; the per-example outer product of Goodfellow 2015 summed over positions).
"""
from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerInput, padding_amounts
from .registry import LayerFlops, register_rule


def padded(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """`x` (n, C, *spatial) padded exactly as the module pads it (`persample.layers.padding_amounts`,
    in its `padding_mode`), so that a convolution with padding 0 gives the module's output; `x`
    itself when the module adds no padding."""
    amounts = [side for before_after in reversed(padding_amounts(module)) for side in before_after]
    if not any(amounts):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, amounts, mode=mode)


def unfold(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """im2col as a view of the padded input: (n, C, *spatial) -> (n, C, *out_positions, *kernel_offsets)."""
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
    """y = conv(x, W) + b, any dims, stride, padding, padding_mode, dilation and groups."""

    @staticmethod
    def grad_sample(module: nn.modules.conv._ConvNd, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, *weight.shape), "bias": (n, out_channels)} for the names in `trainable`:
        the per-group product of the output gradient with the unfolded input (module docstring;
        Rochette et al. 2019), and the output gradient summed over positions. Not differentiable (its
        inputs are detached: per-sample gradients are data, and the result keeps no graph alive)."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
        n, groups = x.shape[0], module.groups
        grads = {}
        if "weight" in trainable:
            cols = unfold(module, x)  # (n, C, *L, *K)
            c_per_group = module.in_channels // groups
            cols = cols.reshape(n, groups, c_per_group, grad_out[0, 0].numel(), -1)
            g = grad_out.reshape(n, groups, module.out_channels // groups, -1)
            weight = torch.einsum("ngol,ngclk->ngock", g, cols)
            grads["weight"] = weight.reshape(n, *module.weight.shape)
        if "bias" in trainable:
            grads["bias"] = grad_out.reshape(n, module.out_channels, -1).sum(-1)
        return grads

    @staticmethod
    def expanded_forward(module: nn.modules.conv._ConvNd, inputs: LayerInput,
                         weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, out_channels, *out_spatial) with sample n's weights[name][n], as one
        grouped convolution over the whole batch: sample n's channels form groups n·G .. n·G+G−1
        and meet only sample n's copy of the weight (Rochette et al. 2019; Opacus, Yousefpour et
        al. 2021). `weights` holds (n, *weight.shape) and, with a bias, (n, out_channels)."""
        x = inputs.first
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

    @staticmethod
    def flops(module: nn.modules.conv._ConvNd, inputs: LayerInput, output: torch.Tensor,
              trainable: Collection[str]) -> LayerFlops:
        """2 FLOPs per (output position, output channel, input channel of its group, kernel offset)
        in the forward, the input gradient and a trainable weight's per-sample gradient; one per
        output element for the bias (forward, and gradient when trainable)."""
        positions = output.numel() // module.out_channels
        products = 2 * positions * module.out_channels * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        bias = positions * module.out_channels if module.bias is not None else 0
        per_sample = products * ("weight" in trainable) + bias * ("bias" in trainable)
        return LayerFlops(products + bias, products, per_sample)


register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)(ConvRule)


def _transposed_output_padding(module: nn.modules.conv._ConvTransposeNd, inputs: LayerInput) -> list[int]:
    """The output_padding of this call: the module's, or the one its `output_size` argument asks
    for (torch's `_ConvTransposeNd._output_padding`, as `forward` computes it)."""
    x, dims = inputs.first, len(module.kernel_size)
    output_size = inputs.args[1] if len(inputs.args) > 1 else inputs.kwargs.get("output_size")
    return module._output_padding(x, output_size, module.stride, module.padding, module.kernel_size, dims,
                                  module.dilation)


def _transposed_weight_grads(module: nn.modules.conv._ConvTransposeNd, x: torch.Tensor, grad_out: torch.Tensor,
                             per_sample: bool) -> torch.Tensor:
    """gW of a transposed convolution (module docstring): (n, *weight.shape) per sample, or
    (*weight.shape) summed over the batch (the sum taken inside the contraction)."""
    n, groups = x.shape[0], module.groups
    cols = unfold(module, grad_out)  # (n, O, *L', *K), L' ≥ x's positions
    cols = cols[(slice(None), slice(None)) + tuple(slice(0, size) for size in x.shape[2:])]
    c_per_group, o_per_group = module.in_channels // groups, module.out_channels // groups
    cols = cols.reshape(n, groups, o_per_group, x[0, 0].numel(), -1)
    xs = x.reshape(n, groups, c_per_group, -1)
    if per_sample:
        return torch.einsum("ngcl,ngolk->ngcok", xs, cols).reshape(n, *module.weight.shape)
    return torch.einsum("ngcl,ngolk->gcok", xs, cols).reshape(module.weight.shape)


def _conv_transpose_fn(dims: int):
    return (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]


class ConvTransposeRule:
    """y = convᵀ(x, W) + b, any dims, stride, padding, output_padding (or output_size), dilation, groups."""

    @staticmethod
    def grad_sample(module: nn.modules.conv._ConvTransposeNd, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, in_channels, out_channels/groups, *kernel), "bias": (n, out_channels)} for the
        names in `trainable`: per group, x contracted with the unfolded output gradient (the weight
        gradient of the convolution whose input gradient this layer is: module docstring), and the
        output gradient summed over positions. Not differentiable (inputs detached, as the
        convolution's)."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
        grads = {}
        if "weight" in trainable:
            grads["weight"] = _transposed_weight_grads(module, x, grad_out, per_sample=True)
        if "bias" in trainable:
            grads["bias"] = grad_out.reshape(x.shape[0], module.out_channels, -1).sum(-1)
        return grads

    @staticmethod
    def grad_batch(module: nn.modules.conv._ConvTransposeNd, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": weight.shape, "bias": (out_channels,)} for the names in
        `trainable`, the batch summed inside the contraction (no per-sample tensor)."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
        grads = {}
        if "weight" in trainable:
            grads["weight"] = _transposed_weight_grads(module, x, grad_out, per_sample=False)
        if "bias" in trainable:
            grads["bias"] = grad_out.transpose(0, 1).reshape(module.out_channels, -1).sum(-1)
        return grads

    @staticmethod
    def expanded_forward(module: nn.modules.conv._ConvTransposeNd, inputs: LayerInput,
                         weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, out_channels, *out_spatial) with sample n's weights[name][n], as one grouped
        transposed convolution over the whole batch: sample n's channels form groups n·G .. n·G+G−1
        and meet only sample n's copy of the weight (the batch folded into the groups, as the
        convolution rule does; Rochette et al. 2019). `weights` holds (n, in_channels, out/G, *k)
        and, with a bias, (n, out_channels)."""
        x = inputs.first
        n, dims = x.shape[0], len(module.kernel_size)
        weight = weights["weight"]
        out = _conv_transpose_fn(dims)(
            x.reshape(1, n * x.shape[1], *x.shape[2:]),
            weight.reshape(n * weight.shape[1], *weight.shape[2:]),
            stride=module.stride,
            padding=module.padding,
            output_padding=_transposed_output_padding(module, inputs),
            groups=n * module.groups,
            dilation=module.dilation,
        )
        out = out.reshape(n, module.out_channels, *out.shape[2:])
        if "bias" in weights:
            out = out + weights["bias"].reshape(n, module.out_channels, *([1] * dims))
        return out

    @staticmethod
    def flops(module: nn.modules.conv._ConvTransposeNd, inputs: LayerInput, output: torch.Tensor,
              trainable: Collection[str]) -> LayerFlops:
        """2 FLOPs per (input position, input channel, output channel of its group, kernel offset) in
        the forward, the input gradient and a trainable weight's per-sample gradient; one per output
        element for the bias (forward, and gradient when trainable)."""
        positions = inputs.first.numel() // module.in_channels
        products = 2 * positions * module.in_channels * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        bias = output.numel() if module.bias is not None else 0
        per_sample = products * ("weight" in trainable) + bias * ("bias" in trainable)
        return LayerFlops(products + bias, products, per_sample)


register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)(ConvTransposeRule)
