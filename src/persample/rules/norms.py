"""Affine normalisations: LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d, and BatchNorm1d/2d/3d
(and SyncBatchNorm) in eval mode with running statistics.

Indices: n batch; the rest of the input's dims are reduced. With x̂ the normalised input (no
affine), y = γ ⊙ x̂ + β, so gγ[n] = Σ g[n] ⊙ x̂[n] and gβ[n] = Σ g[n], summed over every dim
that γ is broadcast along (layer norm: Ba et al. 2016, "Layer Normalization"; group norm: Wu & He
2018, "Group Normalization"; RMSNorm: Zhang & Sennrich 2019, "Root Mean Square Layer
Normalization"; instance norm: Ulyanov et al. 2016). x̂ depends on sample n alone, so these are
exact per-sample gradients. BatchNorm (Ioffe & Szegedy 2015, "Batch Normalization", §3.1: at
inference x̂ = (x − E[x]) / √(Var[x] + ε) with the population statistics, "a linear transform") in
eval mode with running statistics is the fixed per-channel affine map
x̂[n,c,…] = (x[n,c,…] − μ_c) / √(σ²_c + ε), so gγ[n,c] = Σ_… g[n,c,…] x̂[n,c,…], gβ[n,c] = Σ_… g[n,c,…];
in training mode, or without running statistics (track_running_stats=False), its x̂ uses the
batch's statistics, which couple the samples: its rule does not apply then (`BatchNormRule.applies`),
and only its FLOPs are counted. Statistics are computed in float32 for half-precision inputs.
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
    `persample.layers.uses_running_stats` says it does; BatchNorm always does (its rule applies only
    then: `BatchNormRule.applies`)."""
    x32 = _upcast(x)
    if isinstance(module, nn.LayerNorm):
        out = F.layer_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.RMSNorm):
        out = F.rms_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.GroupNorm):
        out = F.group_norm(x32, module.num_groups, eps=module.eps)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        mean, var = module.running_mean.to(x32.dtype), module.running_var.to(x32.dtype)
        out = F.batch_norm(x32, mean, var, training=False, eps=module.eps)
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
        Σ g[n] ⊙ x̂[n] and gβ[n] = Σ g[n] over the dims γ is broadcast along (module docstring). Not
        differentiable (inputs detached: per-sample gradients are data)."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
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


def batch_statistics_reason(module: nn.modules.batchnorm._BatchNorm) -> str | None:
    """Why a BatchNorm normalises with the batch's statistics now (training mode, or no running
    statistics: track_running_stats=False), as a predicate of the layer; None when it uses its running
    ones (`persample.layers.uses_running_stats`)."""
    if uses_running_stats(module):
        return None
    state = ("is in training mode" if module.training
             else "has no running statistics (track_running_stats=False), even in eval mode")
    return (f"{state}: it normalises with the batch's statistics, which couple the samples, so its "
            "per-sample gradient is undefined (its rule holds in eval mode with running statistics: "
            "track_running_stats=True and module.eval(); or replace it with GroupNorm or LayerNorm)")


class BatchNormRule:
    """y = γ ⊙ (x − μ) / √(σ² + ε) + β per channel (dim 1) with the running μ, σ² (eval mode): a fixed
    affine map of each sample (module docstring; Ioffe & Szegedy 2015, §3.1)."""

    applies = staticmethod(batch_statistics_reason)
    grad_sample = NormRule.grad_sample
    expanded_forward = NormRule.expanded_forward
    flops = NormRule.flops

    @staticmethod
    def grad_batch(module: nn.modules.batchnorm._BatchNorm, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (C,), "bias": (C,)} for the names in `trainable`, as
        Σ_{n,…} g ⊙ x̂ and Σ_{n,…} g over every dim but the channels', without a per-sample tensor."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
        dims = [0, *range(2, x.dim())]
        grads = {}
        if "weight" in trainable:
            grads["weight"] = (grad_out * normalised(module, x)).sum(dims)
        if "bias" in trainable:
            grads["bias"] = grad_out.sum(dims)
        return grads


register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)(BatchNormRule)


@register_rule(nn.modules.batchnorm._BatchNorm)
class BatchNormCost:
    """Any other BatchNorm (a direct subclass of `_BatchNorm`): FLOPs only."""

    flops = NormRule.flops
