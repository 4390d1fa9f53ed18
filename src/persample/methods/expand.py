"""`expand`: give every weight a per-sample copy (a stride-0 view of shape (B, *shape)) and run
each layer with its sample's copy, so one backward pass returns per-sample gradients directly.

The layers' batched forms (batched einsum, grouped convolution, per-sample gather, per-sample
affine) live in `persample.rules`; autograd does the rest. The price is memory: the backward
materialises a (B, *shape) gradient for every weight, and some kernels copy the expanded weight.

    >>> import torch, persample
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    >>> grads = persample.per_sample_grads(model, torch.randn(5, 1, 8, 8), torch.randint(2, (5,)), method="expand")
    >>> grads["0.weight"].shape
    torch.Size([5, 4, 1, 3, 3])
"""
from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .. import checks
from ..assumptions import MATCHES_DEFINITION
from ..batch import CallArgs
from ..capabilities import Capabilities, Finding, refusal
from ..contract import Batch, LossFn, trainable_parameters
from ..gradients import gradients
from ..checks.guard import check_no_gradient_outside
from ..layers import LayerInput
from ..rules import LayerRule, rule_types
from ..state import preserved
from .hooks import IDENTITY_HINT
from .rule_based import REFUSALS, RELIES_ON, RuleBasedMethod, owners_with_rules

LOSS_RELATIVE = 1e-5  # the expanded forward computes the model's own losses, up to rounding
OUTPUT_RELATIVE = 1e-4  # and each layer's output, up to rounding (float32 on the checks' widened model)


@contextmanager
def per_sample_forwards(
    rules: dict[nn.Module, LayerRule], expanded: dict[int, torch.Tensor], batch: int
) -> Iterator[None]:
    """Temporarily route each module's forward through its rule's expanded form.

    `expanded` maps id(param) to the (B, *param.shape) leaf of each trainable parameter. Every
    other tensor the rule reads (`rule.params`: a frozen parameter, a buffer, a plain attribute
    such as a weight a parent's forward assigns) is the module's own, read when the layer is
    called, as a stride-0 view (the formulas take per-sample weights) that autograd differentiates
    as the model does: nothing for a frozen one, the "trainable parameters only" contract of the
    rules' `grad_sample`. Keep the block open through the backward pass: activation checkpointing
    recomputes forwards there.
    """
    for module, rule in rules.items():
        module.forward = _bound(rule, module, expanded, batch)
    try:
        yield
    finally:
        for module in rules:
            del module.forward


def call_weights(module: nn.Module, names: Collection[str], expanded: dict[int, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)} for each of `names` the module holds now: the per-sample leaf in `expanded`
    of a trainable parameter, else the module's tensor as a stride-0 view; a name the module holds
    as None (no bias) is left out."""
    weights = {}
    for local in names:
        param = module._parameters.get(local)
        if param is not None and id(param) in expanded:
            weights[local] = expanded[id(param)]
            continue
        tensor = getattr(module, local, None)
        if isinstance(tensor, torch.Tensor):
            weights[local] = tensor.unsqueeze(0).expand(batch, *tensor.shape)
    return weights


def _bound(rule: LayerRule, module: nn.Module, expanded: dict[int, torch.Tensor], batch: int):
    def forward(*args, **kwargs) -> torch.Tensor:
        weights = call_weights(module, rule.params, expanded, batch)
        return rule.expanded_forward(module, LayerInput(args, kwargs), weights)

    return forward


def expanded_step(model: nn.Module, loss_fn: LossFn, rules, params, call: CallArgs, targets: torch.Tensor,
                  expanded: dict[int, torch.Tensor], retain_graph: bool = False, guard: bool = False):
    """(per-sample gradients, losses) from one expanded forward and one backward. With `guard`,
    the same backward gives what reaches the parameters themselves, which, the expanded copies
    being detached, is only what flows outside their layers' calls: it must be none."""
    batch = targets.shape[0]
    with per_sample_forwards(rules, expanded, batch):
        losses = loss_fn(call.call(model), targets)
        leaves = [expanded[id(p)] for p in params.values()]
        extra = [p for p in params.values() if guard]
        grads = gradients(losses.sum(), leaves + extra, retain_graph=retain_graph, dense=not guard)
    if guard:
        check_no_gradient_outside(dict(zip(params, grads[len(leaves):])), "expand")
        grads = [g if g is not None else torch.zeros_like(leaf) for g, leaf in zip(grads[: len(leaves)], leaves)]
    return dict(zip(params, grads)), losses


class ExpandMethod(RuleBasedMethod):
    """`expand`: every weight expanded to a per-sample (B, *shape) stride-0 view, each layer run with its
    sample's copy, so one backward returns per-sample gradients; `guard=False` drops the per-call guard.
    """

    reuses_outputs = True  # the Linear rule's outer products go into kept buffers (`persample.outputs`)

    capabilities = Capabilities(
        name="expand",
        summary="per-sample expanded weights; autograd returns per-sample gradients",
        layers=rule_types(),
        relies_on=RELIES_ON,
        refusals=REFUSALS,
    )

    def __init__(self, guard: bool = True) -> None:
        """`guard=False` drops the per-call check that no gradient reaches a parameter outside its
        layer (`persample.checks.guard`)."""
        self.guard = guard

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        rules = owners_with_rules(model)
        params = trainable_parameters(model)
        guard = self.guard

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            batch = targets.shape[0]
            expanded = {id(p): p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_() for p in params.values()}
            return expanded_step(model, loss_fn, rules, params, call, targets, expanded, guard=guard)[0]

        return step

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        """Σᵢ wᵢ gᵢ against the plain model's gradient of Σᵢ wᵢ ℓᵢ, and the expanded forward's
        losses against the plain forward's (the rules' batched forms compute the same model). A
        forward that draws random numbers is held against its own graph instead (same masks)."""
        model, params, batch = context.check_model, context.params, context.batch_size
        random = context.observation().draws_random_numbers
        plain = None if random else context.forward()
        expanded = {id(p): p.unsqueeze(0).expand(batch, *p.shape) if random
                    else p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_() for p in params.values()}
        with preserved(model), torch.enable_grad():
            per_sample, losses = expanded_step(model, context.loss_fn, owners_with_rules(model), params,
                                               context.check_call, context.check_targets, expanded, retain_graph=random)
            if random:
                checks.weighted_identity(context, per_sample, losses, IDENTITY_HINT)
                return
        difference = (losses.detach() - plain.losses.detach()).abs().max().item()
        if difference > LOSS_RELATIVE * max(plain.losses.detach().abs().max().item(), 1e-30):
            layer = diverging_call(plain.calls, owners_with_rules(model))
            why = (f"computes other losses than the model with its layers' batched forms (off by {difference:.3g}): "
                   + ("its rule's batched form gives another output than its forward on this batch" if layer
                      else "a layer's forward is not the one its rule describes"))
            raise refusal(Finding(why, layer.qualname if layer else None, layer.module if layer else None),
                          MATCHES_DEFINITION.id, self.name)
        checks.weighted_identity(context, per_sample, plain.losses, IDENTITY_HINT)


def diverging_call(calls, rules: dict[nn.Module, LayerRule]):
    """The first recorded call (a `LayerCall`) of a layer whose rule's expanded forward, given the
    module's own tensors, does not reproduce the call's output within `OUTPUT_RELATIVE` of its largest
    magnitude; None when every one that can be recomputed does (a tensor the forward assigned and
    the restore removed cannot be)."""
    for call in calls:
        rule = rules.get(call.module)
        if (rule is None or not isinstance(call.output, torch.Tensor) or not call.output.is_floating_point()
                or call.output.numel() == 0):
            continue
        output = call.output.detach()
        try:
            with torch.no_grad():
                weights = call_weights(call.module, rule.params, {}, output.shape[0])
                again = rule.expanded_forward(call.module, call.inputs, weights)
        except Exception:  # noqa: BLE001 - a diagnosis only: what cannot be recomputed names no layer
            continue
        scale = max(output.abs().max().item(), 1e-30)
        if again.shape != output.shape or (again - output).abs().max().item() > OUTPUT_RELATIVE * scale:
            return call
    return None
