"""Affine normalisations: LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d.

Indices: n batch; the rest of the input's dims are reduced. With x̂ the normalised input (no
affine), y = γ ⊙ x̂ + β, so gγ[n] = Σ g[n] ⊙ x̂[n] and gβ[n] = Σ g[n], summed over every dim
that γ is broadcast along. Statistics are computed in float32 for half-precision inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_rule


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂: the module's output before its affine transform, in x's dtype."""
    x32 = _upcast(x)
    if isinstance(module, nn.LayerNorm):
        out = F.layer_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.RMSNorm):
        out = F.rms_norm(x32, module.normalized_shape, eps=module.eps)
    elif isinstance(module, nn.GroupNorm):
        out = F.group_norm(x32, module.num_groups, eps=module.eps)
    else:  # InstanceNorm: running statistics replace the per-instance ones when they are used
        use_running = module.track_running_stats and not module.training
        out = F.instance_norm(
            x32,
            module.running_mean if use_running else None,
            module.running_var if use_running else None,
            use_input_stats=not use_running,
            eps=module.eps,
        )
    return out.to(x.dtype)


def _affine_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-sample (n, *γ.shape) against x."""
    weight = module.weight
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return (x.shape[0],) + (1,) * (x.dim() - 1 - weight.dim()) + tuple(weight.shape)
    return (x.shape[0], weight.shape[0]) + (1,) * (x.dim() - 2)


def _reduce_to(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    dims = [d for d, size in enumerate(shape) if size == 1 and values.shape[d] != 1]
    return values.sum(dims) if dims else values


class NormRule:
    @staticmethod
    def grad_sample(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = _affine_shape(module, x)
        target = (x.shape[0],) + tuple(module.weight.shape)
        grads = {}
        if module.weight is not None:
            grads["weight"] = _reduce_to(grad_out * normalised(module, x), shape).reshape(target)
        if getattr(module, "bias", None) is not None:
            grads["bias"] = _reduce_to(grad_out, shape).reshape(target)
        return grads

    @staticmethod
    def expanded_forward(module: nn.Module, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        shape = _affine_shape(module, x)
        out = normalised(module, x)
        if "weight" in weights:
            out = out * weights["weight"].reshape(shape)
        if "bias" in weights:
            out = out + weights["bias"].reshape(shape)
        return out


for _layer in (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    register_rule(_layer)(NormRule)
