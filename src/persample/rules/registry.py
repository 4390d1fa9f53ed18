"""One registry of what persample knows about each layer type: its `LayerRule`.

A rule carries the layer's per-sample-gradient formula (hooks, kernel's fallback, the guard), its
batched forward with per-sample weights (expand), its FLOP count (the roofline floor) and a slot for
the per-sample gradient norm. A layer type whose per-sample gradient persample does not compute
(BatchNorm, the recurrent layers) may still be registered with its FLOP count only: `layer_rule`
finds every entry, `rule_for` only those that compute gradients.

Lookup: a module's type or its nearest registered base class, unless a class on the way overrides
`forward` (`persample.layers.nearest_registered`). A layer of an optional package is registered by
its qualified name (`register_rule("transformers.pytorch_utils.Conv1D")`), so persample never
imports the package: such an entry matches by name along the module's MRO, and its rule's `layer`
is the matched class itself (a `persample.layers.named_layer` stand-in in `rule_types`).

A rule may hold in some states of its layer only (BatchNorm: in eval mode, with running
statistics): its `applies(module)` names why it does not hold now, `rule_for` then returns None, and
`rule_refusal_reason` gives the sentence a refusal shows.

The contract every gradient formula obeys: `grad_sample(module, inputs, grad_out, trainable)`
returns exactly the names in `trainable` (the module's own parameters with `requires_grad`, among
`rule.params`), so nothing is computed for a frozen weight; hooks, expand, kernel and the guard
ask for the same names (`LayerRule.trainable`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..layers import (
    LayerInput,
    NamedLayer,
    named_layer,
    nearest_registered_base,
    qualified_name,
)


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
BatchFirst = Callable[[nn.Module, LayerInput, Any], tuple[LayerInput, Any]]
"""`batch_first(module, inputs, output) -> (inputs, output)`: views of one call's arguments and
output (or of anything shaped like the output: its gradient) with the sample on dim 0, for a layer
whose layout puts it elsewhere (nn.MultiheadAttention and the recurrent layers time-major by
default; an RNN's h_n (layers·directions, B, H) always). The checks read a call through it
(`persample.checks.layout`); a layer without one is read as it is (batch on dim 0)."""
Applies = Callable[[nn.Module], "str | None"]
"""`applies(module) -> None` when the rule's formula holds for `module` in its current state, else
why not, as a predicate of the layer ("is in training mode: ..."): BatchNorm's rule holds in eval
mode with running statistics only; EmbeddingBag's not with scale_grad_by_freq or max_norm."""


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
    applies: `Applies`; None when the formula holds in every state of the layer. Asked by
    `rule_for` (with a module, not a type) and by `rule_refusal_reason`.
    batch_first: `BatchFirst`; None for a layer whose arguments and output carry the batch on dim 0.
    layer: the registered class; for an entry registered by qualified name, the class it matched
    (`layer_rule`, `rule_for`), or its `named_layer` stand-in (`rule_types`).
    """

    layer: type[nn.Module]
    grad_sample: GradSample | None = None
    expanded_forward: ExpandedForward | None = None
    params: tuple[str, ...] = ("weight", "bias")
    grad_batch: GradSample | None = None
    flops: FlopCount | None = None
    norm_sample: NormSample | None = None
    applies: Applies | None = None
    batch_first: BatchFirst | None = None

    @property
    def computes_gradients(self) -> bool:
        """Whether this rule gives per-sample gradients (else it only counts FLOPs)."""
        return self.grad_sample is not None and self.expanded_forward is not None

    def trainable(self, module: nn.Module) -> frozenset[str]:
        """The names, among `params`, of the parameters `module` holds that require gradients (its own,
        and children's it claims by dotted name): what its formulas are asked for."""
        return trainable_locals(module, self.params)


def owned_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor `module` holds under the (possibly dotted) `name` ("out_proj.weight" is
    `module.out_proj.weight`, a child's parameter the module's own forward reads), or None when a
    step of the path is missing or holds None."""
    *path, leaf = name.split(".")
    owner: Any = module
    for step in path:
        owner = getattr(owner, step, None)
        if owner is None:
            return None
    tensor = getattr(owner, leaf, None)
    return tensor if isinstance(tensor, torch.Tensor) else None


def trainable_locals(module: nn.Module, names: Collection[str] = ("weight", "bias")) -> frozenset[str]:
    """The names in `names` (dotted ones: a child's parameter the module's rule claims) of parameters
    `module` holds that exist and have `requires_grad`."""
    return frozenset(n for n in names if isinstance(t := owned_tensor(module, n), nn.Parameter) and t.requires_grad)


_RULES: dict[type[nn.Module] | str, LayerRule] = {}
"""Keyed by class, or by qualified name for a layer of an optional package (never imported here)."""
_MATCHED: dict[tuple[str, type], LayerRule] = {}
"""A name-keyed rule with `layer` set to each class it matched, made once per class."""


def register_rule(*layers: type[nn.Module] | str) -> Callable[[type], type]:
    """Class decorator registering one `LayerRule` for each of `layers` from the class's static
    `grad_sample`, `expanded_forward`, `grad_batch`, `flops`, `norm_sample`, `applies`, `batch_first` (each optional)
    and `params` (default ("weight", "bias")). A layer is a class, or the qualified name of one
    ("transformers.pytorch_utils.Conv1D": matched by name, its package never imported). Raises
    TypeError when it has only one of grad_sample and expanded_forward, or neither a formula nor `flops`."""

    def decorate(cls: type) -> type:
        fields = {f: getattr(cls, f, None) for f in _FIELDS}
        fields["params"] = getattr(cls, "params", ("weight", "bias"))
        rule = LayerRule(object, **fields)
        if (rule.grad_sample is None) != (rule.expanded_forward is None):
            raise TypeError(f"{cls.__name__}: a rule gives both grad_sample and expanded_forward, or neither")
        if not rule.computes_gradients and rule.flops is None:
            raise TypeError(f"{cls.__name__}: a rule gives the gradient formulas, the FLOP count, or both")
        for layer in layers:
            _RULES[layer] = LayerRule(named_layer(layer) if isinstance(layer, str) else layer, **fields)
            _MATCHED.clear()
        return cls

    return decorate


_FIELDS = ("grad_sample", "expanded_forward", "params", "grad_batch", "flops", "norm_sample", "applies", "batch_first")


def layer_rule(module: nn.Module | type[nn.Module]) -> LayerRule | None:
    """Every registered rule for `module`, cost-only ones and ones that do not apply in the module's
    state included (see `persample.layers.nearest_registered`). A rule registered by qualified name
    comes with `layer` set to the class it matched."""
    found = nearest_registered_base(module, _RULES)
    if found is None:
        return None
    base, key = found
    if not isinstance(key, str):
        return _RULES[key]
    rule = _MATCHED.get((key, base))
    if rule is None:
        rule = _MATCHED[key, base] = dataclasses.replace(_RULES[key], layer=base)
    return rule


def rule_for(module: nn.Module | type[nn.Module]) -> LayerRule | None:
    """The rule that computes `module`'s per-sample gradients, or None (no rule, a cost-only one,
    a subclass that overrides `forward`, whose base's formula would silently be wrong, or a rule
    whose `applies` says it does not hold in the module's state: BatchNorm in training mode). Given
    a type, the rule for that type whatever state its modules are in."""
    rule = layer_rule(module)
    if rule is None or not rule.computes_gradients:
        return None
    if rule.applies is not None and not isinstance(module, type) and rule.applies(module) is not None:
        return None
    return rule


def rule_refusal_reason(module: nn.Module) -> str | None:
    """None when `rule_for(module)` gives a rule; else why not, as a predicate of the layer, for a
    refusal ("layer 1 (BatchNorm2d) is in training mode: ..."):

    - the rule's own reason when it does not apply in the module's state (`LayerRule.applies`);
    - "overrides forward() of a layer with a rule, so the rule's formula may not apply";
    - "has no per-layer rule for the parameters it owns itself ('weight', ...)" (none registered,
      or one that counts FLOPs only).
    """
    if rule_for(module) is not None:
        return None
    rule = layer_rule(module)
    if rule is not None and rule.computes_gradients and rule.applies is not None:
        return rule.applies(module)
    kind = type(module)
    if rule is None and any(base in _RULES or qualified_name(base) in _RULES for base in kind.__mro__):
        return "overrides forward() of a layer with a rule, so the rule's formula may not apply"
    owned = ", ".join(repr(n) for n, p in module.named_parameters(recurse=False) if p.requires_grad)
    return f"has no per-layer rule for the parameters it owns itself ({owned})"


def rule_types() -> tuple[type[nn.Module], ...]:
    """Every layer type whose per-sample gradient a rule computes, in registration order; a layer
    registered by qualified name is its `persample.layers.named_layer` stand-in, which `isinstance`
    matches by name (its package is not imported)."""
    return tuple(rule.layer for rule in _RULES.values() if rule.computes_gradients)


def resolved_rule_types() -> tuple[type[nn.Module], ...]:
    """`rule_types` with each stand-in replaced by its class where its package imports (importing
    it), and left out where it does not (the optional package is missing)."""
    types = (t.resolve() if isinstance(t, NamedLayer) else t for t in rule_types())
    return tuple(t for t in types if t is not None)
