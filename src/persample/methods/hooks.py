"""`hooks`: capture each layer's input in a forward hook and the gradient of the summed loss with
respect to its output, then apply the layer's rule (Goodfellow's outer-product trick).

One ordinary backward pass gives every layer's output gradient; since sample i's output only
affects loss i, the rule turns (input, output gradient) into exact per-sample gradients.

    >>> import torch, persample
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(16, 4), torch.randint(3, (16,))
    >>> grads = persample.per_sample_grads(model, x, y, method="hooks")
    >>> grads["0.weight"].shape
    torch.Size([16, 8, 4])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..contract import Batch, LossFn, as_tuple, trainable_parameters
from ..errors import Unsupported
from ..rules import LayerRule, rule_for, rule_types
from .registry import Capabilities, Method, Step, register
from .rule_based import RuleLookup, missing_rule, owners_with_rules


@dataclass
class Capture:
    module: nn.Module
    rule: LayerRule
    input: torch.Tensor
    output: torch.Tensor
    version: int


def capture_forward(model: nn.Module, rules: dict[nn.Module, LayerRule], inputs) -> tuple[torch.Tensor, list[Capture]]:
    """Run the model, recording (input, output) of every call of every module in `rules`."""
    captures: list[Capture] = []

    def record(module, args, output):
        captures.append(Capture(module, rules[module], args[0], output, output._version))

    handles = [module.register_forward_hook(record) for module in rules]
    try:
        outputs = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, captures


def accumulate(
    params: dict[str, nn.Parameter], captures: list[Capture], grad_outputs, batch: int
) -> dict[str, torch.Tensor]:
    """Apply each capture's rule and sum contributions per parameter (tied or reused layers)."""
    by_param: dict[int, torch.Tensor] = {}
    for capture, grad_out in zip(captures, grad_outputs):
        if grad_out is None:  # this call's output does not reach the loss
            continue
        for local, grad in capture.rule.grad_sample(capture.module, capture.input, grad_out).items():
            param = getattr(capture.module, local)
            if param.requires_grad:
                key = id(param)
                by_param[key] = grad if key not in by_param else by_param[key] + grad
    # A parameter no call reached gets zeros (allocated only then: a `get` default would be
    # allocated for every parameter, doubling the peak memory).
    return {
        name: by_param[id(p)] if id(p) in by_param else p.new_zeros(batch, *p.shape)
        for name, p in params.items()
    }


def check_not_modified_in_place(captures: list[Capture], method: str) -> None:
    for capture in captures:
        if capture.output._version != capture.version:
            kind = type(capture.module).__name__
            raise Unsupported(
                f"the output of a {kind} layer is modified in place by a later operation "
                "(e.g. ReLU(inplace=True)), which destroys the output gradient this method "
                "needs. Fix: use the out-of-place operation (inplace=False).",
                method=method,
                layer=kind,
            )


class HooksLikeMethod(Method):
    """Forward capture + output gradients + a rule per layer; subclasses pick the rules."""

    def rule_lookup(self) -> RuleLookup:
        return rule_for

    def find_unsupported(self, model: nn.Module) -> Unsupported | None:
        return missing_rule(model, self.name, self.rule_lookup())

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        rules = owners_with_rules(model, self.rule_lookup())
        params = trainable_parameters(model)

        def step(inputs, targets) -> dict[str, torch.Tensor]:
            outputs, captures = capture_forward(model, rules, as_tuple(inputs))
            losses = loss_fn(outputs, targets)
            grad_outputs = torch.autograd.grad(
                losses.sum(), [c.output for c in captures], allow_unused=True
            )
            check_not_modified_in_place(captures, self.name)
            return accumulate(params, captures, grad_outputs, targets.shape[0])

        return step


@register
class HooksMethod(HooksLikeMethod):
    capabilities = Capabilities(
        name="hooks",
        summary="forward hooks + output gradients + per-layer rules (Goodfellow's trick)",
        layers=rule_types(),
    )
