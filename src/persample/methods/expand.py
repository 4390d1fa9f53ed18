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

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..contract import Batch, LossFn, as_tuple, trainable_parameters
from ..errors import Unsupported
from ..rules import LayerRule, rule_for, rule_types
from .registry import Capabilities, Method, Step, register
from .rule_based import missing_rule, owners_with_rules


@contextmanager
def per_sample_forwards(
    rules: dict[nn.Module, LayerRule], expanded: dict[int, torch.Tensor], batch: int
) -> Iterator[None]:
    """Temporarily route each module's forward through its rule's expanded form.

    Frozen parameters of these modules are expanded too (the formulas take per-sample weights)
    but carry no gradient.
    """
    for module, rule in rules.items():
        weights = {
            local: expanded.get(id(p), p.detach().unsqueeze(0).expand(batch, *p.shape))
            for local, p in module.named_parameters(recurse=False)
        }
        module.forward = _bound(rule, module, weights)
    try:
        yield
    finally:
        for module in rules:
            del module.forward


def _bound(rule: LayerRule, module: nn.Module, weights: dict[str, torch.Tensor]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return rule.expanded_forward(module, x, weights)

    return forward


@register
class ExpandMethod(Method):
    capabilities = Capabilities(
        name="expand",
        summary="per-sample expanded weights; autograd returns per-sample gradients",
        layers=rule_types(),
    )

    def find_unsupported(self, model: nn.Module) -> Unsupported | None:
        return missing_rule(model, self.name)

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        rules = owners_with_rules(model)
        params = trainable_parameters(model)

        def step(inputs, targets) -> dict[str, torch.Tensor]:
            batch = targets.shape[0]
            expanded = {
                id(p): p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_()
                for p in params.values()
            }
            with per_sample_forwards(rules, expanded, batch):
                losses = loss_fn(model(*as_tuple(inputs)), targets)
            leaves = [expanded[id(p)] for p in params.values()]
            grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
            return {
                name: torch.zeros_like(leaf) if grad is None else grad
                for name, leaf, grad in zip(params, leaves, grads)
            }

        return step
