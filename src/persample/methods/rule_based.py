"""What the methods built on per-layer rules (`persample.rules`) share: which modules they handle,
what they refuse up front, and the assumptions they check on the example batch.

A rule turns a layer's input and the gradient of the loss with respect to its output into the
per-sample gradients of the layer's own parameters. That is exact when every trainable parameter
is owned by a layer with a rule, reaches the loss only through that layer's calls, and each call
carries the batch on dim 0 with row i from sample i alone; `_check_assumptions` verifies the
last two on the example batch (`persample.checks`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import checks
from ..assumptions import BATCH_FIRST, INTACT_OUTPUTS, LAYER_RULES, MATCHES_DEFINITION, OWN_LAYER, PLAIN_FORWARD
from ..capabilities import Finding, Refusal
from ..contract import trainable_owners
from ..rules import LayerRule, rule_for, rule_types
from .base import Method

RuleLookup = Callable[[nn.Module], LayerRule | None]
RELIES_ON = (LAYER_RULES.id, OWN_LAYER.id, BATCH_FIRST.id, INTACT_OUTPUTS.id, MATCHES_DEFINITION.id)
"""What expand relies on; hooks and kernel also need `plain-forward` (they differentiate each layer
through its output only, while expand's autograd also follows a derivative taken in forward)."""


def owners_with_rules(model: nn.Module, lookup: RuleLookup = rule_for) -> dict[nn.Module, LayerRule]:
    """Every module owning a trainable parameter, with its rule (refusals guarantee one exists)."""
    return {module: lookup(module) for _, module in trainable_owners(model)}


def _reparametrised(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    """A trainable parameter a rule would not see: reparametrised, or recomputed by a pre-hook."""
    for qualname, module in trainable_owners(model):
        if isinstance(module, parametrize.ParametrizationList):
            kinds = ", ".join(sorted({type(p).__name__ for p in module}))
            return Finding(
                f"holds parameters from which torch.nn.utils.parametrize recomputes a weight on every access "
                f"({kinds}, e.g. parametrizations.weight_norm or spectral_norm): the layer's rule "
                "differentiates the computed weight, not these parameters", qualname, module)
        rule = rule_for(module)
        if rule is None:
            continue
        for local, param in module.named_parameters(recurse=False):
            if param.requires_grad and local not in rule.params:
                return Finding(
                    f"owns the trainable parameter {local!r}, which the {rule.layer.__name__} rule does not "
                    f"differentiate (it reads {', '.join(rule.params)}): a pre-hook such as "
                    "torch.nn.utils.weight_norm or spectral_norm recomputes the weight from it", qualname, module)
    return None


def _missing_rule(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    names = ", ".join(sorted(t.__name__ for t in rule_types()))
    for qualname, module in trainable_owners(model):
        if rule_for(module) is None:
            owned = ", ".join(repr(n) for n, p in module.named_parameters(recurse=False) if p.requires_grad)
            why = ("overrides forward() of a layer with a rule, so the rule's formula may not apply"
                   if isinstance(module, rule_types()) else f"has no per-layer rule for the parameters it owns itself ({owned})")
            return Finding(f"{why}; rules exist for {names}", qualname, module)
    return None


REFUSALS = (
    Refusal(OWN_LAYER.id, "parameters reparametrised (torch.nn.utils.parametrize) or recomputed by a "
            "pre-hook (weight_norm, spectral_norm)", _reparametrised),
    Refusal(LAYER_RULES.id, "trainable layers without a rule: "
            + ", ".join(sorted(t.__name__ for t in rule_types())) + " have one", _missing_rule),
)


class RuleBasedMethod(Method):
    """Checks the rules' assumptions on the example batch; subclasses build the step."""

    takes_call_args = True

    def rule_lookup(self) -> RuleLookup:
        """The function giving each layer its rule: `rules.rule_for` (the kernel method substitutes its Triton
        rules).
        """
        return rule_for

    def captured_layers(self, model: nn.Module) -> frozenset[nn.Module]:
        """Every module owning a trainable parameter: the layers whose calls the checks record."""
        return frozenset(owners_with_rules(model, self.rule_lookup()))

    def _check_assumptions(self, context: checks.CheckContext) -> None:
        checks.check_observed(context, self.capabilities.relies_on)
        checks.probe_batch_layout(context)
        checks.samples_alone(context)  # the batch computes each sample as it would alone: values,
        checks.whole_batch_gradients(context, weighted_sum=PLAIN_FORWARD.id in self.capabilities.relies_on)  # and gradients
