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
from ..observe import expand_shared, shared_arguments
from ..rules import LayerRule
from ..rules.registry import owned_tensor
from ..state import preserved
from ..checks.guard import BatchResidual
from .hooks import IDENTITY_HINT, _check_outputs_intact, capture_calls, live_calls, output_targets, rule_gradients, zeros_where_unreached
from .rule_based import REFUSALS, RELIES_ON, RuleBasedMethod, layer_plan, placement_of_plan, qualified_names

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
    """{name: (B, *shape)} for each of `names` the module holds now (a dotted name: a child's tensor the
    module's forward reads, as nn.MultiheadAttention's "out_proj.weight"): the per-sample leaf in
    `expanded` of a trainable parameter, else the module's tensor as a stride-0 view; a name the
    module holds as None (no bias) is left out."""
    weights = {}
    for name in names:
        tensor = owned_tensor(module, name)
        if tensor is not None:
            weights[name] = expanded[id(tensor)] if id(tensor) in expanded else tensor.unsqueeze(0).expand(batch, *tensor.shape)
    return weights


def routed_and_captured(plan: dict[nn.Module, LayerRule]) -> tuple[dict[nn.Module, LayerRule], dict[nn.Module, LayerRule]]:
    """`plan` split into the layers run through their rule's expanded forward and those without one
    (the per-layer torch.func fallback), whose calls are captured as hooks captures them."""
    routed = {m: r for m, r in plan.items() if r.expanded_forward is not None}
    return routed, {m: r for m, r in plan.items() if r.expanded_forward is None}


def expanded_parameters(plan: dict[nn.Module, LayerRule], params: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """The parameters of `params` that a routed layer (see `routed_and_captured`) computes: those that
    get a per-sample (B, *shape) leaf."""
    routed, _ = routed_and_captured(plan)
    ids = {id(module.get_parameter(name)) for module, rule in routed.items() for name in rule.trainable(module)}
    return {name: p for name, p in params.items() if id(p) in ids}


def _bound(rule: LayerRule, module: nn.Module, expanded: dict[int, torch.Tensor], batch: int):
    def forward(*args, **kwargs) -> torch.Tensor:
        weights = call_weights(module, rule.params, expanded, batch)
        inputs = LayerInput(args, kwargs)
        if rule.batch_first is None and shared_arguments(args, kwargs, batch):  # positions: each sample's own copy, with its own weights
            inputs = expand_shared(args, kwargs, batch)
        return rule.expanded_forward(module, inputs, weights)

    return forward


def expanded_step(model: nn.Module, loss_fn: LossFn, plan, params, call: CallArgs, targets: torch.Tensor,
                  expanded: dict[int, torch.Tensor], retain_graph: bool = False, guard: bool = False):
    """(per-sample gradients, losses) from one expanded forward and one backward. Layers without an
    expanded forward (the torch.func fallback) have their calls captured and their rule applied to the
    output gradients of the same backward. With `guard`, the same backward gives what reaches the
    parameters themselves: for an expanded one, whose copies are detached, only what flows outside
    its layers' calls, which must be none; for a captured one, its batch gradient, which the rule's
    per-sample gradients must sum to."""
    batch = targets.shape[0]
    routed, captured = routed_and_captured(plan)
    leaf_names = [name for name, p in params.items() if id(p) in expanded]
    free = {name: p for name, p in params.items() if id(p) not in expanded}
    with per_sample_forwards(routed, expanded, batch):
        outputs, calls = capture_calls(model, qualified_names(model, captured) if captured else {}, call)
        losses = loss_fn(outputs, targets)
        live = live_calls(calls)
        outs = output_targets(live)
        leaves = [expanded[id(params[name])] for name in leaf_names]
        extra = [params[name] for name in leaf_names] + list(free.values()) if guard else []
        grads = gradients(losses.sum(), leaves + outs + extra, retain_graph=retain_graph, dense=not guard)
    per_sample = {name: g if g is not None else torch.zeros_like(leaf)
                  for name, g, leaf in zip(leaf_names, grads, leaves)}
    if free:
        _check_outputs_intact([entry.call for entry in live], "expand")
        residual = None
        if guard:
            residual = BatchResidual(free, dict(zip(free, grads[len(leaves) + len(outs) + len(leaf_names):])))
        by_param = rule_gradients(captured, live, grads[len(leaves): len(leaves) + len(outs)], batch, residual, "expand")
        per_sample.update(zeros_where_unreached(free, by_param, batch))
        if residual is not None:
            residual.check("expand")
    if guard:
        check_no_gradient_outside(dict(zip(leaf_names, grads[len(leaves) + len(outs):])), "expand")
    return {name: per_sample[name] for name in params}, losses


class ExpandMethod(RuleBasedMethod):
    """`expand`: every weight expanded to a per-sample (B, *shape) stride-0 view, each layer run with its
    sample's copy, so one backward returns per-sample gradients; `guard=False` drops the per-call guard.
    """

    reuses_outputs = True  # the Linear rule's outer products go into kept buffers (`persample.outputs`)

    capabilities = Capabilities(
        name="expand",
        summary="per-sample expanded weights; autograd returns per-sample gradients",
        layers=None,  # closed-form rules where registered, the per-layer torch.func fallback elsewhere
        relies_on=RELIES_ON,
        refusals=REFUSALS,
    )

    def __init__(self, guard: bool = True) -> None:
        """`guard=False` drops the per-call check that no gradient reaches a parameter outside its
        layer (`persample.checks.guard`)."""
        self.guard = guard

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        plan = layer_plan(model)
        params = trainable_parameters(model)
        routed = expanded_parameters(plan, params)
        guard = self.guard

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            batch = targets.shape[0]
            expanded = {id(p): p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_() for p in routed.values()}
            return expanded_step(model, loss_fn, plan, params, call, targets, expanded, guard=guard)[0]

        step.placement = placement_of_plan(model, plan)
        return step

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        """Σᵢ wᵢ gᵢ against the plain model's gradient of Σᵢ wᵢ ℓᵢ, and the expanded forward's
        losses against the plain forward's (the rules' batched forms compute the same model). A
        forward that draws random numbers is held against its own graph instead (same masks)."""
        model, params, batch = context.check_model, context.params, context.batch_size
        random = context.observation().draws_random_numbers
        plain = None if random else context.forward()
        plan = layer_plan(model)
        expanded = {id(p): p.unsqueeze(0).expand(batch, *p.shape) if random
                    else p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_()
                    for p in expanded_parameters(plan, params).values()}
        with preserved(model), torch.enable_grad():
            per_sample, losses = expanded_step(model, context.loss_fn, plan, params,
                                               context.check_call, context.check_targets, expanded, retain_graph=random)
            if random:
                checks.weighted_identity(context, per_sample, losses, IDENTITY_HINT)
                return
        difference = (losses.detach() - plain.losses.detach()).abs().max().item()
        if difference > LOSS_RELATIVE * max(plain.losses.detach().abs().max().item(), 1e-30):
            layer = diverging_call(plain.calls, routed_and_captured(plan)[0])
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
