"""Registry of layer rules keyed by module type; subclasses match unless they change `forward`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GradSample = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""`grad_sample(module, x, grad_out) -> {local param name: (B, *param.shape)}`; `grad_batch`, the
same summed over the batch, (*param.shape), computed without the per-sample tensor."""
ExpandedForward = Callable[[nn.Module, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class LayerRule:
    """The two formulas of one layer type, and the parameters they differentiate.

    grad_sample(module, x, grad_out) -> {local param name: (B, *param.shape)}
    expanded_forward(module, x, weights) -> output, with weights[name] of shape (B, *param.shape)
    params: the local names of the parameters the formulas read (a layer owning any other
    trainable parameter, such as weight_norm's weight_g, is not what the rule describes)
    grad_batch(module, x, grad_out) -> {local param name: (*param.shape)}: Σᵢ of grad_sample,
    without making the per-sample tensor (what the guard of a prepared step compares with
    autograd's batch gradient); None: summed from grad_sample
    """

    layer: type[nn.Module]
    grad_sample: GradSample
    expanded_forward: ExpandedForward
    params: tuple[str, ...] = ("weight", "bias")
    grad_batch: GradSample | None = None


_RULES: dict[type[nn.Module], LayerRule] = {}


def register_rule(layer: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator: the class's static `grad_sample` and `expanded_forward` become a rule."""

    def decorate(cls: type) -> type:
        _RULES[layer] = LayerRule(layer, cls.grad_sample, cls.expanded_forward, getattr(cls, "params", ("weight", "bias")),
                                  getattr(cls, "grad_batch", None))
        return cls

    return decorate


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for `module`'s type or its nearest registered base class.

    A subclass that overrides `forward` computes something else, so it does not match: the
    base class's formula would silently give wrong gradients.
    """
    for base in type(module).__mro__:
        rule = _RULES.get(base)
        if rule is not None:
            return rule if type(module).forward is base.forward else None
    return None


def rule_types() -> tuple[type[nn.Module], ...]:
    """Every layer type that has a rule."""
    return tuple(_RULES)
