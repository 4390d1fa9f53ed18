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

from typing import NamedTuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .. import checks
from ..assumptions import INTACT_OUTPUTS, LAYER_RULES
from ..batch import CallArgs
from ..capabilities import Capabilities, Finding, refusal
from ..contract import Batch, LossFn, trainable_parameters
from ..checks.guard import BatchResidual
from ..layers import LayerInput
from ..observe import LayerCall, broadcast_shared, is_shared_call, output_version
from ..rules.functional import functional_grad_sample
from ..rules import LayerRule
from ..assumptions import OUTPUT_GRADIENTS, PLAIN_FORWARD
from .rule_based import REFUSALS, RELIES_ON, RuleBasedMethod, layer_plan, placement_of_plan, qualified_names

IDENTITY_HINT = (
    "A parameter reaches the loss other than through the calls of the layer that owns it, or a "
    "layer's input is shared by all samples; use vmap, jax or loop"
)


def capture_calls(model: nn.Module, layers, call: CallArgs) -> tuple[object, list[LayerCall]]:
    """Run the model, recording (arguments, own output) of every call of every module in `layers`.
    Returns the model's outputs and the calls in order; `layers` as a {module: qualified name} dict
    names the calls (for refusals). A call on arguments every sample shares
    (positions: one row) is recorded, and handed on, expanded to the batch (`observe.broadcast_shared`)."""
    calls: list[LayerCall] = []
    batch = call.batch_size
    names = layers if isinstance(layers, dict) else {}

    def record(module, args, kwargs, output):
        if is_shared_call(module, args, kwargs, output, batch):  # positions: each sample's own copy (`broadcast_shared`)
            inputs, output = broadcast_shared(args, kwargs, output, batch)
            calls.append(LayerCall(module, names.get(module, ""), inputs, output, output_version(output), torch.is_grad_enabled(), None, True))
            return output
        calls.append(LayerCall(module, names.get(module, ""), LayerInput(args, kwargs), output, output_version(output),
                               torch.is_grad_enabled(), None))
        return None

    handles = [module.register_forward_hook(record, prepend=True, with_kwargs=True) for module in layers]
    try:
        outputs = call.call(model)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


class LiveCall(NamedTuple):
    """A captured call whose output reaches autograd: its floating-point output tensors that require
    gradients (`reached`, positions among the output's pytree leaves)."""

    call: LayerCall
    leaves: list
    spec: object
    reached: list[int]


def live_calls(calls: list[LayerCall]) -> list[LiveCall]:
    """The calls with at least one output tensor requiring gradients (made with gradients enabled)."""
    live = []
    for call in calls:
        leaves, spec = tree_flatten(call.output)
        reached = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
        if reached:
            live.append(LiveCall(call, leaves, spec, reached))
    return live


def output_targets(live: list[LiveCall]) -> list[torch.Tensor]:
    """Every output tensor of `live` to differentiate, call after call (what `rule_gradients` reads back)."""
    return [entry.leaves[i] for entry in live for i in entry.reached]


def rule_gradients(
    plan: dict[nn.Module, LayerRule],
    live: list[LiveCall],
    output_grads,
    batch: int,
    residual: BatchResidual | None = None,
    method: str = "hooks",
) -> dict[int, torch.Tensor]:
    """{id(param): (B, *param.shape)}: each live call's rule applied to (arguments, ∂Σℓ/∂output), summed
    per parameter (reused or tied layers add up). `output_grads` follows `output_targets(live)`. The
    rule receives a tensor for a single-tensor output, else the output's structure with the gradient
    of each reached tensor and None elsewhere. With `residual`, each call's batch formula is
    subtracted from autograd's batch gradient (`persample.checks.guard`). Raises `Unsupported` naming
    the layer when the torch.func fallback cannot batch its forward (a branch on a tensor's value,
    `.item()`, random numbers)."""
    by_param: dict[int, torch.Tensor] = {}
    grads = iter(output_grads)
    names: dict[nn.Module, frozenset[str]] = {}
    for entry in live:
        call = entry.call
        mine = {i: next(grads) for i in entry.reached}
        if all(g is None for g in mine.values()):  # this call's output does not reach the loss
            continue
        grad_out = (mine[0] if isinstance(call.output, torch.Tensor) else
                    tree_unflatten([mine.get(i) for i in range(len(entry.leaves))], entry.spec))
        rule = plan[call.module]
        if call.module not in names:
            names[call.module] = rule.trainable(call.module)
        trainable = names[call.module]
        per_call = _apply(rule, call, grad_out, trainable, method)
        summed = (rule.grad_batch(call.module, call.inputs, grad_out, trainable) if rule.grad_batch else
                  {k: v.sum(0) for k, v in per_call.items()}) if residual is not None else {}
        for local, grad in per_call.items():
            param = call.module.get_parameter(local)
            key = id(param)
            by_param[key] = grad if key not in by_param else by_param[key] + grad
            if residual is not None:
                residual.account(param, summed.pop(local))
    return by_param


def _apply(rule: LayerRule, call: LayerCall, grad_out, trainable: frozenset[str], method: str) -> dict[str, torch.Tensor]:
    if rule.grad_sample is not functional_grad_sample:
        return rule.grad_sample(call.module, call.inputs, grad_out, trainable)
    try:
        return functional_grad_sample(call.module, call.inputs, grad_out, trainable)
    except Exception as error:  # noqa: BLE001 - whatever torch.func raises becomes a refusal naming the layer
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise refusal(Finding(
            f"has no per-layer rule, and its forward cannot be batched by torch.func for the per-layer fallback "
            f"({type(error).__name__}: {first[:200]}): a Python branch on a tensor's value, .item(), random numbers "
            "or an in-place update of an argument", call.qualname or None, call.module), LAYER_RULES.id, method) from None


def grads_from_calls(
    params: dict[str, nn.Parameter],
    calls: list[LayerCall],
    losses: torch.Tensor,
    plan: dict[nn.Module, LayerRule],
    method: str,
    *,
    retain_graph: bool = False,
    guard: bool = False,
) -> dict[str, torch.Tensor]:
    """{name: (B, *param.shape)} for every parameter in `params`: each call's rule from `plan`
    (`rule_based.layer_plan`) applied to (arguments, ∂Σℓ/∂output), summed per parameter (reused or
    tied layers add up); a parameter that no call reached gets zeros. Each rule is asked only for its
    module's trainable parameters (`LayerRule.trainable`): nothing is computed for a frozen one. Calls
    whose output carries no gradient (made under torch.no_grad()) contribute nothing. With `guard`,
    the same backward also gives autograd's batch gradient, held against the rules' batch formulas
    (`persample.checks.guard`), which raises `StaleStep` when they disagree; `Unsupported` when a
    captured output was modified in place."""
    live = live_calls(calls)
    outputs = output_targets(live)
    targets = outputs + (list(params.values()) if guard else [])
    grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True, retain_graph=retain_graph) if targets else []
    _check_outputs_intact([entry.call for entry in live], method)
    # With the guard, autograd's batch gradient minus what each call's rule accounts for, in place
    # (no second copy of the batch gradient is held): what remains must be rounding.
    residual = BatchResidual(params, dict(zip(params, grads[len(outputs):]))) if guard else None
    by_param = rule_gradients(plan, live, grads[: len(outputs)], losses.shape[0], residual, method)
    per_sample = zeros_where_unreached(params, by_param, losses.shape[0])
    if residual is not None:
        residual.check(method)
    return per_sample


def zeros_where_unreached(params: dict[str, nn.Parameter], by_param: dict[int, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """{name: by_param[id(param)]}, zeros (B, *shape) for a parameter no call reached (allocated only
    for those: a `get` default would allocate them for every parameter, doubling the peak memory)."""
    return {name: by_param[id(p)] if id(p) in by_param else p.new_zeros(batch, *p.shape) for name, p in params.items()}


def _check_outputs_intact(calls: list[LayerCall], method: str) -> None:
    for call in calls:
        if output_version(call.output) != call.output_version:
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
        plan = layer_plan(model, self.rule_lookup())
        layers = qualified_names(model, plan)
        params = trainable_parameters(model)
        name, guard = self.name, self.guard

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs, calls = capture_calls(model, layers, call)
            return grads_from_calls(params, calls, loss_fn(outputs, targets), plan, name, guard=guard)

        step.placement = placement_of_plan(model, plan)
        return step

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        forward = context.forward()
        per_sample = grads_from_calls(context.params, forward.calls, forward.losses,
                                      layer_plan(context.check_model, self.rule_lookup()), self.name, retain_graph=True)
        checks.weighted_identity(context, per_sample, forward.losses, IDENTITY_HINT)


class HooksMethod(HooksLikeMethod):
    """`hooks`: each layer's input from a forward hook and its output gradient from one backward, turned into
    per-sample gradients by the layer's rule (Goodfellow 2015, the outer-product trick).
    """

    reuses_outputs = True  # the Linear rule's outer products go into kept buffers (`persample.outputs`)

    capabilities = Capabilities(
        name="hooks",
        summary="forward hooks + output gradients + per-layer rules (Goodfellow's trick)",
        layers=None,  # closed-form rules where registered, the per-layer torch.func fallback elsewhere
        relies_on=(*RELIES_ON, PLAIN_FORWARD.id, OUTPUT_GRADIENTS.id),
        refusals=REFUSALS,
    )
