"""`hooks`: capture each layer's input in a forward hook and the gradient of the summed loss with
respect to its output, then apply the layer's rule (Goodfellow's outer-product trick).

One ordinary backward pass gives every layer's output gradient; since sample i's output only
affects loss i, the rule turns (input, output gradient) into exact per-sample gradients. Before
that holds for a model, `prepare` checks it on the example batch (`persample.checks`).

    >>> import torch, persample
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(16, 4), torch.randint(3, (16,))
    >>> grads = persample.per_sample_grads(model, x, y, method="hooks")
    >>> grads["0.weight"].shape
    torch.Size([16, 8, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..assumptions import INTACT_OUTPUTS
from ..batch import CallArgs
from ..capabilities import Capabilities, Finding, refusal
from ..contract import Batch, LossFn, trainable_parameters
from ..checks.guard import BatchResidual
from ..layers import LayerInput
from ..observe import LayerCall
from ..rules import LayerRule, rule_types
from ..assumptions import OUTPUT_GRADIENTS, PLAIN_FORWARD
from .rule_based import REFUSALS, RELIES_ON, RuleBasedMethod, RuleLookup, owners_with_rules

IDENTITY_HINT = (
    "A parameter reaches the loss other than through the calls of the layer that owns it, or a "
    "layer's input is shared by all samples; use vmap, jax or loop"
)


def capture_calls(model: nn.Module, layers, call: CallArgs) -> tuple[object, list[LayerCall]]:
    """Run the model, recording (arguments, own output) of every call of every module in `layers`.
    Returns the model's outputs and the calls in order."""
    calls: list[LayerCall] = []

    def record(module, args, kwargs, output):
        calls.append(LayerCall(module, "", LayerInput(args, kwargs), output, output._version, torch.is_grad_enabled(), None))

    handles = [module.register_forward_hook(record, prepend=True, with_kwargs=True) for module in layers]
    try:
        outputs = call.call(model)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


def grads_from_calls(
    params: dict[str, nn.Parameter],
    calls: list[LayerCall],
    losses: torch.Tensor,
    lookup: RuleLookup,
    method: str,
    *,
    retain_graph: bool = False,
    guard: bool = False,
) -> dict[str, torch.Tensor]:
    """{name: (B, *param.shape)} for every parameter in `params`: each call's rule applied to
    (arguments, ∂Σℓ/∂output), summed per parameter (reused or tied layers add up); a parameter that
    no call reached gets zeros. Each rule is asked only for its module's trainable parameters
    (`LayerRule.trainable`): nothing is computed for a frozen one. Calls whose output carries no
    gradient (made under torch.no_grad()) contribute nothing. With `guard`, the same backward also
    gives autograd's batch gradient, held against the rules' batch formulas (`persample.checks.guard`),
    which raises `StaleStep` when they disagree; `Unsupported` when a captured output was modified
    in place."""
    live = [c for c in calls if isinstance(c.output, torch.Tensor) and c.output.requires_grad]
    targets = [c.output for c in live] + (list(params.values()) if guard else [])
    grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True, retain_graph=retain_graph) if targets else []
    grad_outputs, batch_grads = grads[: len(live)], dict(zip(params, grads[len(live):]))
    _check_outputs_intact(live, method)
    batch = losses.shape[0]
    rules: dict[nn.Module, tuple[LayerRule, frozenset[str]]] = {}
    by_param: dict[int, torch.Tensor] = {}
    # With the guard, autograd's batch gradient minus what each call's rule accounts for, in place
    # (no second copy of the batch gradient is held): what remains must be rounding.
    residual = BatchResidual(params, batch_grads) if guard else None
    for call, grad_out in zip(live, grad_outputs):
        if grad_out is None:  # this call's output does not reach the loss
            continue
        if call.module not in rules:
            rule = lookup(call.module)
            rules[call.module] = rule, rule.trainable(call.module)
        rule, trainable = rules[call.module]
        per_call = rule.grad_sample(call.module, call.inputs, grad_out, trainable)
        summed = (rule.grad_batch(call.module, call.inputs, grad_out, trainable) if rule.grad_batch else
                  {k: v.sum(0) for k, v in per_call.items()}) if guard else {}
        for local, grad in per_call.items():
            param = getattr(call.module, local)
            key = id(param)
            by_param[key] = grad if key not in by_param else by_param[key] + grad
            if residual is not None:
                residual.account(param, summed.pop(local))
    # Zeros only for parameters no call reached (a `get` default would allocate them for every
    # parameter, doubling the peak memory).
    per_sample = {
        name: by_param[id(p)] if id(p) in by_param else p.new_zeros(batch, *p.shape)
        for name, p in params.items()
    }
    if residual is not None:
        residual.check(method)
    return per_sample


def _check_outputs_intact(calls: list[LayerCall], method: str) -> None:
    for call in calls:
        if call.output._version != call.output_version:
            raise refusal(Finding(
                "has its output modified in place by a later operation (e.g. ReLU(inplace=True)), which "
                "destroys the output gradient this method needs", call.qualname or None, call.module),
                INTACT_OUTPUTS.id, method)


class HooksLikeMethod(RuleBasedMethod):
    """Forward capture + output gradients + a rule per layer; subclasses pick the rules.

    `guard=False` drops the per-call check of the batch gradient against what the rules saw
    (`persample.checks.guard`): a little faster, for models whose path cannot change between batches.
    """

    def __init__(self, guard: bool = True) -> None:
        self.guard = guard

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        layers = list(owners_with_rules(model, self.rule_lookup()))
        params = trainable_parameters(model)
        lookup, name = self.rule_lookup(), self.name
        guard = self.guard

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs, calls = capture_calls(model, layers, call)
            return grads_from_calls(params, calls, loss_fn(outputs, targets), lookup, name, guard=guard)

        return step

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        forward = context.forward()
        per_sample = grads_from_calls(context.params, forward.calls, forward.losses, self.rule_lookup(),
                                      self.name, retain_graph=True)
        checks.weighted_identity(context, per_sample, forward.losses, IDENTITY_HINT)


class HooksMethod(HooksLikeMethod):
    """`hooks`: each layer's input from a forward hook and its output gradient from one backward, turned into
    per-sample gradients by the layer's rule (Goodfellow 2015, the outer-product trick).
    """

    reuses_outputs = True  # the Linear rule's outer products go into kept buffers (`persample.outputs`)

    capabilities = Capabilities(
        name="hooks",
        summary="forward hooks + output gradients + per-layer rules (Goodfellow's trick)",
        layers=rule_types(),
        relies_on=(*RELIES_ON, PLAIN_FORWARD.id, OUTPUT_GRADIENTS.id),
        refusals=REFUSALS,
    )
