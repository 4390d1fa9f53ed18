"""Methods wrong on purpose, each in one of the ways per-sample-gradient code goes wrong silently;
`persample check` must report every one as wrong and say which check caught it."""
from __future__ import annotations

import torch

from persample import Capabilities, Method
from persample.methods.registry import get


class _Wrapped(Method):
    """The loop's answer, then spoiled by `spoil(grads, model)`."""

    def _prepare(self, model, loss_fn, example_batch):
        def step(inputs, targets):
            grads = get("loop")(model, inputs, targets, loss_fn)
            return self.spoil(grads, model)
        return step

    def spoil(self, grads, model):
        raise NotImplementedError


class MeanGradient(_Wrapped):
    """Each gᵢ divided by B: what a per-sample method built on the mean loss returns."""

    capabilities = Capabilities(name="mean-gradient", summary="test: gᵢ / B")

    def spoil(self, grads, model):
        return {n: g / g.shape[0] for n, g in grads.items()}


class Leaky(_Wrapped):
    """Each gᵢ mixed with 5% of the batch mean: samples leak into each other."""

    capabilities = Capabilities(name="leaky", summary="test: gᵢ + 0.05 mean_j g_j")

    def spoil(self, grads, model):
        return {n: g + 0.05 * g.mean(0, keepdim=True) for n, g in grads.items()}


class LeavesHooks(_Wrapped):
    """Right values, but a forward hook left on every layer (hooks registered and never removed)."""

    capabilities = Capabilities(name="leaves-hooks", summary="test: hooks left behind")

    def spoil(self, grads, model):
        for module in model.modules():
            module.register_forward_hook(lambda *args: None)
        return grads


class WrongPeer(MeanGradient):
    """A peer's method that is wrong: the exit code counts it only with `--fail-on any`."""

    capabilities = Capabilities(name="wrong-peer", summary="test: a wrong peer", peer=True)


class Stale(Method):
    """Right on the first batch of each size, then that answer again for any batch of that size."""

    capabilities = Capabilities(name="stale", summary="test: a cached answer")

    def __init__(self) -> None:
        self.seen = {}

    def _prepare(self, model, loss_fn, example_batch):
        def step(inputs, targets):
            rows = targets.shape[0]
            if rows not in self.seen:
                self.seen[rows] = get("loop")(model, inputs, targets, loss_fn)
            return self.seen[rows]
        return step


class ZeroesSmallest(_Wrapped):
    """The parameter with the smallest gradient left out (zeros): below the comparison's floor."""

    capabilities = Capabilities(name="zeroes-smallest", summary="test: a small parameter's gradient missing")

    def spoil(self, grads, model):
        smallest = min(grads, key=lambda n: grads[n].norm())
        return {n: torch.zeros_like(g) if n == smallest else g for n, g in grads.items()}


class WritesInputs(_Wrapped):
    """Right values, but the inputs are scaled in place (a normalisation done on the caller's tensor)."""

    capabilities = Capabilities(name="writes-inputs", summary="test: writes into the inputs")

    def _prepare(self, model, loss_fn, example_batch):
        def step(inputs, targets):
            grads = get("loop")(model, inputs, targets, loss_fn)
            inputs.mul_(0.5)
            return grads
        return step
