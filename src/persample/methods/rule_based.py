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
from ..rules import LayerRule, layer_rule, rule_for
from ..rules.registry import owned_tensor
from ..rules.functional import PLACEMENT as FALLBACK, fallback_rule, functional_grad_sample
from .base import Method

RuleLookup = Callable[[nn.Module], LayerRule | None]
RELIES_ON = (LAYER_RULES.id, OWN_LAYER.id, BATCH_FIRST.id, INTACT_OUTPUTS.id, MATCHES_DEFINITION.id)
"""What expand relies on; hooks and kernel also need `plain-forward` (they differentiate each layer
through its output only, while expand's autograd also follows a derivative taken in forward)."""


def claimed_parameters(module: nn.Module, rule: LayerRule) -> dict[str, nn.Parameter]:
    """{dotted name: parameter} of the children's trainable parameters `rule` claims for `module`
    (`rule.params` names such as nn.MultiheadAttention's "out_proj.weight": its forward reads them
    itself, the child is never called)."""
    return {name: owned_tensor(module, name) for name in rule.trainable(module) if "." in name}


def layer_plan(model: nn.Module, lookup: RuleLookup = rule_for) -> dict[nn.Module, LayerRule]:
    """Every module whose calls give per-sample gradients, with its rule: each module owning a
    trainable parameter gets its registered rule (`lookup`), or, with none, the per-layer torch.func
    fallback (`persample.rules.functional`), unless an ancestor's rule claims all its trainable
    parameters (nn.MultiheadAttention's out_proj), in which case that ancestor is in the plan instead.
    Refusals (`REFUSALS`) run first: a module whose rule does not apply in its state (BatchNorm in
    training mode) never reaches here."""
    plan: dict[nn.Module, LayerRule] = {}
    claimed: set[int] = set()
    for module in model.modules():
        rule = lookup(module)
        if rule is not None and (children := claimed_parameters(module, rule)):
            plan[module] = rule
            claimed.update(id(p) for p in children.values())
    for _, module in trainable_owners(model):
        if module in plan or all(id(p) in claimed for p in module.parameters(recurse=False) if p.requires_grad):
            continue
        plan[module] = lookup(module) or fallback_rule(module)
    return plan


def qualified_names(model: nn.Module, modules) -> dict[nn.Module, str]:
    """{module: its qualified name in `model`} for each of `modules` ("" for the model itself)."""
    names = {module: name for name, module in model.named_modules()}
    return {module: names.get(module, "") for module in modules}


def placement_of_plan(model: nn.Module, plan: dict[nn.Module, LayerRule]) -> dict[str, str]:
    """{qualified name: "rules" | "torch.func"} for every module in `plan`: which layers a closed-form
    rule computes and which the per-layer torch.func fallback does."""
    names = qualified_names(model, plan)
    return {names[module]: FALLBACK if rule.grad_sample is functional_grad_sample else "rules"
            for module, rule in plan.items()}


def owners_with_rules(model: nn.Module, lookup: RuleLookup = rule_for) -> dict[nn.Module, LayerRule]:
    """`layer_plan` (the name the checks and the kernel method know it by)."""
    return layer_plan(model, lookup)


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


def _rule_does_not_apply(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    """A layer whose registered rule says it does not apply in the layer's current state (BatchNorm in
    training mode normalises with the batch's statistics, which couple the samples). A layer with no
    rule at all is not refused: the per-layer torch.func fallback computes it, under the same checks."""
    for qualname, module in trainable_owners(model):
        rule = layer_rule(module)
        applies = getattr(rule, "applies", None)
        reason = applies(module) if applies is not None else None
        if reason:
            return Finding(reason, qualname, module)
    return None


REFUSALS = (
    Refusal(OWN_LAYER.id, "parameters reparametrised (torch.nn.utils.parametrize) or recomputed by a "
            "pre-hook (weight_norm, spectral_norm)", _reparametrised),
    Refusal(LAYER_RULES.id, "a layer whose rule does not apply in its state (BatchNorm normalising with the "
            "batch's statistics); layers without a rule run on the per-layer torch.func fallback", _rule_does_not_apply),
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
