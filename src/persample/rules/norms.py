"""Affine normalisations: LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d; BatchNorm's FLOPs.

Indices: n batch; the rest of the input's dims are reduced. With x̂ the normalised input (no
affine), y = γ ⊙ x̂ + β, so gγ[n] = Σ g[n] ⊙ x̂[n] and gβ[n] = Σ g[n], summed over every dim
that γ is broadcast along (layer norm: Ba et al. 2016, "Layer Normalization"; group norm: Wu & He
2018, "Group Normalization"; RMSNorm: Zhang & Sennrich 2019, "Root Mean Square Layer
Normalization"; instance norm: Ulyanov et al. 2016). x̂ depends on sample n alone, so these are
exact per-sample gradients; BatchNorm's x̂ depends on the whole batch in training mode, so it is
registered for its FLOPs only. Statistics are computed in float32 for half-precision inputs.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerInput, uses_running_stats
from .registry import LayerFlops, register_rule


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂ (x.shape, in x's dtype): the module's output before its affine transform, computed in
    float32 for half inputs. InstanceNorm uses its running statistics when
    `persample.layers.uses_running_stats` says it does."""
    x32 = _upcast(x)
    if isinstance(module, nn.LayerNorm):
        out = F.layer_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.RMSNorm):
        out = F.rms_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.GroupNorm):
        out = F.group_norm(x32, module.num_groups, eps=module.eps)
    else:  # InstanceNorm
        running = uses_running_stats(module)
        out = F.instance_norm(
            x32,
            module.running_mean if running else None,
            module.running_var if running else None,
            use_input_stats=not running,
            eps=module.eps,
        )
    return out.to(x.dtype)


def _affine_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-sample (n, *γ.shape) against x: from the layer's configuration
    (normalized_shape, or x's channels), not its tensors, which need not be parameters or still be
    there when a backward runs (a weight a parent's forward assigns)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        shape = tuple(module.normalized_shape)
        return (x.shape[0],) + (1,) * (x.dim() - 1 - len(shape)) + shape
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def _reduce_to(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    dims = [d for d, size in enumerate(shape) if size == 1 and values.shape[d] != 1]
    return values.sum(dims) if dims else values


class NormRule:
    """y = γ ⊙ x̂ + β with per-sample statistics (or InstanceNorm's running ones)."""

    @staticmethod
    def grad_sample(module: nn.Module, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, *γ.shape), "bias": (n, *β.shape)} for the names in `trainable`: gγ[n] =
        Σ g[n] ⊙ x̂[n] and gβ[n] = Σ g[n] over the dims γ is broadcast along (module docstring)."""
        x = inputs.first
        shape = _affine_shape(module, x)
        grads = {}
        if "weight" in trainable:
            target = (x.shape[0],) + tuple(module.weight.shape)
            grads["weight"] = _reduce_to(grad_out * normalised(module, x), shape).reshape(target)
        if "bias" in trainable:
            grads["bias"] = _reduce_to(grad_out, shape).reshape((x.shape[0],) + tuple(module.bias.shape))
        return grads

    @staticmethod
    def expanded_forward(module: nn.Module, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (x.shape): x̂ ⊙ weights["weight"][n] + weights["bias"][n] per sample, each
        (n, *γ.shape) and each optional (Rochette et al. 2019's expand trick on the affine part)."""
        x = inputs.first
        shape = _affine_shape(module, x)
        out = normalised(module, x)
        if "weight" in weights:
            out = out * weights["weight"].reshape(shape)
        if "bias" in weights:
            out = out + weights["bias"].reshape(shape)
        return out

    @staticmethod
    def flops(module: nn.Module, inputs: LayerInput, output, trainable: Collection[str]) -> LayerFlops:
        """Per input element: forward ~7 (mean, variance, normalise, scale, shift), input gradient
        ~8, per-sample gradient of a trainable scale 2 (Σ g·x̂) and of a trainable shift 1 (Σ g)."""
        n = inputs.first.numel()
        return LayerFlops(7 * n, 8 * n, 2 * n * ("weight" in trainable) + n * ("bias" in trainable))


register_rule(nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(NormRule)


@register_rule(nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
class BatchNormCost:
    """BatchNorm: FLOPs only. Its per-sample gradient is not computed here (in training mode its
    statistics couple the samples; in eval mode a rule could be written like InstanceNorm's)."""

    flops = NormRule.flops
