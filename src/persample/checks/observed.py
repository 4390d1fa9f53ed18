"""Assumptions read off the instrumented forward (`persample.observe`): each checker returns the
first place that breaks its assumption as a `Finding`, worded like every other refusal."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..assumptions import AUTOGRAD_FUNCTIONS, GRAD_MODE, OUTPUT_GRADIENTS, OWN_LAYER, PLAIN_FORWARD
from ..gradients import needs_backward
from ..capabilities import Finding, refusal
from ..observe import Observation
from .context import CheckContext

REENTRANT = {"CheckpointFunction": "torch.utils.checkpoint with use_reentrant=True"}


def _name(function: str) -> str:
    known = REENTRANT.get(function)
    return f"{function} ({known})" if known else function


def foreign_use(observed: Observation) -> Finding | None:
    """A trainable parameter used, with gradient, outside the forward of a module that owns it."""
    for name, where in observed.foreign_uses.items():
        return Finding(
            f"parameter {name} is used by {where}, outside the forward of the layer that owns it (a "
            "weight tied by a functional call, or recomputed by a pre-hook or parametrization): the "
            "layer rules see only the layer's own calls, so that use's gradient would be missing"
        )
    for call in observed.calls:
        if call.in_function is not None and not call.grad_enabled and _trainable(call.module):
            return Finding(
                f"is called inside the custom autograd Function {_name(call.in_function)}, whose backward "
                "recomputes it: the output the rules would differentiate carries no gradient. Fix: use "
                "torch.utils.checkpoint(..., use_reentrant=False), or another method",
                call.qualname, call.module,
            )
    return None


def reentrant_checkpoint(observed: Observation) -> Finding | None:
    """The graph holds reentrant checkpointing: no gradient with respect to a layer's output."""
    if needs_backward(observed.losses):
        where = observed.autograd_functions.get("CheckpointFunction", "the forward")
        return Finding(
            f"the forward uses torch.utils.checkpoint with use_reentrant=True (in {where}), which refuses "
            "torch.autograd.grad: the gradient with respect to each layer's output, that the rules need, "
            "cannot be taken")
    return None


def differentiates(observed: Observation) -> Finding | None:
    """The forward takes a derivative: parameters also reach the loss through it."""
    if observed.differentiation:
        return Finding(
            f"the forward differentiates (torch.autograd.grad or .backward() in {observed.differentiation[0]}), "
            "so parameters reach the loss through that derivative as well as through their layers' "
            "outputs, which a layer's rule does not see"
        )
    return None


def no_grad_region(observed: Observation) -> Finding | None:
    """A `Finding` when part of the forward runs under torch.no_grad() (the JAX translation would differentiate
    through it), else None.
    """
    if observed.no_grad_regions:
        return Finding(
            f"part of the forward runs under torch.no_grad() (in {observed.no_grad_regions[0]}), which the "
            "JAX translation cannot express: it would differentiate through it"
        )
    return None


def custom_function(observed: Observation) -> Finding | None:
    """A `Finding` naming the first custom autograd Function the forward applies (its hand-written backward
    would be replaced by the derivative of its forward), else None.
    """
    for function, where in observed.autograd_functions.items():
        return Finding(
            f"the forward applies the custom autograd Function {_name(function)} (in {where}), whose "
            "hand-written backward would be replaced by the derivative of its forward"
        )
    return None


CHECKERS: dict[str, Callable[[Observation], Finding | None]] = {
    OWN_LAYER.id: foreign_use,
    OUTPUT_GRADIENTS.id: reentrant_checkpoint,
    PLAIN_FORWARD.id: differentiates,
    GRAD_MODE.id: no_grad_region,
    AUTOGRAD_FUNCTIONS.id: custom_function,
}


def check_observed(context: CheckContext, relies_on: tuple[str, ...]) -> None:
    """Raise the refusal of the first assumption in `relies_on` that the forward breaks."""
    observed = context.observation()
    for assumption in relies_on:
        checker = CHECKERS.get(assumption)
        if checker is None:
            continue
        finding = checker(observed)
        context.ran(assumption)
        if finding is not None:
            raise refusal(finding, assumption, context.method_name)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))
