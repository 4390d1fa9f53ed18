"""One registry of what persample knows about each layer type: its `LayerRule`.

A rule carries the layer's per-sample-gradient formula (hooks, kernel's fallback, the guard), its
batched forward with per-sample weights (expand), its FLOP count (the roofline floor) and a slot for
the per-sample gradient norm. A layer type whose per-sample gradient persample does not compute
(BatchNorm, the recurrent layers) may still be registered with its FLOP count only: `layer_rule`
finds every entry, `rule_for` only those that compute gradients.

Lookup: a module's type or its nearest registered base class, unless a class on the way overrides
`forward` (`persample.layers.nearest_registered`).

The contract every gradient formula obeys: `grad_sample(module, inputs, grad_out, trainable)`
returns exactly the names in `trainable` (the module's own parameters with `requires_grad`, among
`rule.params`), so nothing is computed for a frozen weight; hooks, expand, kernel and the guard
ask for the same names (`LayerRule.trainable`).
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..layers import LayerInput, nearest_registered


class LayerFlops(NamedTuple):
    """FLOPs of one layer call on the batch it saw (a multiply-add counts 2): the forward, the
    gradient with respect to its input, and the per-sample gradients of all its parameters."""

    forward: float
    input_grad: float
    param_grad: float


GradSample = Callable[[nn.Module, LayerInput, torch.Tensor, Collection[str]], dict[str, torch.Tensor]]
"""`grad_sample(module, inputs, grad_out, trainable) -> {local name: (B, *param.shape)}` for each
name in `trainable`, from the call's arguments and ∂Σℓ/∂output (B, *output.shape[1:]);
`grad_batch` has the same signature and returns the sum over the batch, (*param.shape), without
making the per-sample tensor. `inputs` carries every argument of the call, so a layer called with
several tensors and options (nn.MultiheadAttention's query, key, value, key_padding_mask) reads
them by name (`inputs.bound(module)`); `grad_out` is the gradient of the layer's output tensor
(a layer returning a tuple, such as MultiheadAttention's (output, weights), is not captured today:
its rule would receive the gradient of the tensor it differentiates through)."""
ExpandedForward = Callable[[nn.Module, LayerInput, dict[str, torch.Tensor]], torch.Tensor]
"""`expanded_forward(module, inputs, weights) -> output`: the layer's forward with `weights[name]`
of shape (B, *param.shape), sample n computed with weights[name][n]. `weights` holds each name in
`params` that the module holds as a tensor when called: a trainable parameter's per-sample leaf,
else the module's own tensor (a frozen parameter, a buffer, an attribute a parent's forward
assigns) as a stride-0 view; a name held as None (no bias) is absent. The formula reads tensors
from `weights` only, never from the module."""
FlopCount = Callable[[nn.Module, LayerInput, Any, Collection[str]], LayerFlops]
"""`flops(module, inputs, output, trainable) -> LayerFlops` of the call (as given: usually one
sample); `param_grad` counts only the per-sample gradients of the parameters named in `trainable`
(the module's own parameters with requires_grad), as the formulas compute only those."""
NormSample = Callable[[nn.Module, LayerInput, torch.Tensor, Collection[str]], torch.Tensor]
"""`norm_sample(module, inputs, grad_out, trainable) -> (B,)`: Σ over the `trainable` parameters of
‖gᵢ‖², the squared L2 norm of sample i's gradient, without making gᵢ ("ghost norm": for a Linear
on T tokens ‖gWᵢ‖² = Σ_{t,s} (xᵢₜ·xᵢₛ)(gᵢₜ·gᵢₛ), Li et al. 2022, "Large Language Models Can Be
Strong Differentially Private Learners", §4; for T = 1, ‖gᵢ‖²‖xᵢ‖², Goodfellow 2015). Squared, so
the norms of a sample's layers add up. No rule provides it yet."""


@dataclass(frozen=True)
class LayerRule:
    """Everything persample knows about one layer type.

    grad_sample / grad_batch / expanded_forward: see `GradSample` and `ExpandedForward`; None for a
    cost-only entry (the layer's FLOPs are known, its per-sample gradient is not computed here).
    params: the local names of the parameters the formulas read and differentiate (a layer
    owning any other trainable parameter, such as weight_norm's weight_g, is not what the rule
    describes; a module that owns parameters itself while its children have rules of their own,
    such as a ViT embedding's cls_token, registers a rule naming them).
    grad_batch: None means summed from grad_sample (the guard of a prepared step compares it with
    autograd's batch gradient).
    flops: `FlopCount`; None leaves the layer out of the roofline floor (named as uncounted).
    norm_sample: `NormSample`; None for every rule today.
    """

    layer: type[nn.Module]
    grad_sample: GradSample | None = None
    expanded_forward: ExpandedForward | None = None
    params: tuple[str, ...] = ("weight", "bias")
    grad_batch: GradSample | None = None
    flops: FlopCount | None = None
    norm_sample: NormSample | None = None

    @property
    def computes_gradients(self) -> bool:
        """Whether this rule gives per-sample gradients (else it only counts FLOPs)."""
        return self.grad_sample is not None and self.expanded_forward is not None

    def trainable(self, module: nn.Module) -> frozenset[str]:
        """The local names, among `params`, of `module`'s own parameters that require gradients:
        what its formulas are asked for."""
        return trainable_locals(module, self.params)


def trainable_locals(module: nn.Module, names: Collection[str] = ("weight", "bias")) -> frozenset[str]:
    """The names in `names` of `module`'s own parameters that exist and have `requires_grad`."""
    own = module._parameters
    return frozenset(n for n in names if own.get(n) is not None and own[n].requires_grad)


_RULES: dict[type[nn.Module], LayerRule] = {}


def register_rule(*layers: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator registering one `LayerRule` for each of `layers` from the class's static
    `grad_sample`, `expanded_forward`, `grad_batch`, `flops`, `norm_sample` (each optional) and
    `params` (default ("weight", "bias")). Raises TypeError when it has only one of grad_sample
    and expanded_forward, or neither a formula nor `flops`."""

    def decorate(cls: type) -> type:
        rule = LayerRule(
            layers[0], getattr(cls, "grad_sample", None), getattr(cls, "expanded_forward", None),
            getattr(cls, "params", ("weight", "bias")), getattr(cls, "grad_batch", None),
            getattr(cls, "flops", None), getattr(cls, "norm_sample", None),
        )
        if (rule.grad_sample is None) != (rule.expanded_forward is None):
            raise TypeError(f"{cls.__name__}: a rule gives both grad_sample and expanded_forward, or neither")
        if not rule.computes_gradients and rule.flops is None:
            raise TypeError(f"{cls.__name__}: a rule gives the gradient formulas, the FLOP count, or both")
        for layer in layers:
            _RULES[layer] = LayerRule(layer, *(getattr(rule, f) for f in _FIELDS))
        return cls

    return decorate


_FIELDS = ("grad_sample", "expanded_forward", "params", "grad_batch", "flops", "norm_sample")


def layer_rule(module: nn.Module | type[nn.Module]) -> LayerRule | None:
    """Every registered rule for `module`, cost-only ones included (see `nearest_registered`)."""
    return nearest_registered(module, _RULES)


def rule_for(module: nn.Module | type[nn.Module]) -> LayerRule | None:
    """The rule that computes `module`'s per-sample gradients, or None (no rule, a cost-only one,
    or a subclass that overrides `forward`, whose base's formula would silently be wrong)."""
    rule = layer_rule(module)
    return rule if rule is not None and rule.computes_gradients else None


def rule_types() -> tuple[type[nn.Module], ...]:
    """Every layer type whose per-sample gradient a rule computes, in registration order."""
    return tuple(layer for layer, rule in _RULES.items() if rule.computes_gradients)
