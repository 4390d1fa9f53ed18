"""Whether a method is right on the user's model: its per-sample gradients against the float64
reference (per parameter and worst sample, at the dtype's tolerance), then the invariants."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..batch import CallArgs
from ..conformance.snapshot import ModelSnapshot
from ..errors import LossNotPerSample, Unsupported
from ..methods.base import Method
from ..methods.registry import get
from ..reference import Tolerance, compare, reference_grads, tolerance_for
from ..state import restored_after, same_values
from . import invariants
from .subject import Variant

CORRECT, WRONG, REFUSED, FAILED, UNAVAILABLE, UNJUDGED = "correct", "wrong", "refused", "failed", "unavailable", "unjudged"


@dataclass
class Reference:
    """The per-sample gradients every method is judged by, and what they are; `refusal` when the
    loop refuses the model (every method should: it breaks an assumption all of them share)."""

    grads: dict[str, torch.Tensor] | None
    description: str
    refusal: str = ""


def reference_for(variant: Variant) -> Reference:
    """The loop method in float64 on a float64 copy of the variant; when the model cannot be
    copied to or run in float64, the loop in the variant's own dtype, saying so."""
    inputs = variant.call.to_user()
    try:
        with restored_after(variant.model):
            return Reference(reference_grads(variant.model, inputs, variant.targets, variant.loss_fn),
                             "loop in float64 on a float64 copy of the model and batch")
    except LossNotPerSample:
        raise
    except Unsupported as refused:
        return Reference(None, f"no reference: loop refuses the model ({refused.reason})", refusal=str(refused))
    except Exception as error:  # noqa: BLE001 (a custom op without float64, a dtype check in forward)
        why = f"{type(error).__name__}: {error}"
    own = str(variant.dtype).removeprefix("torch.")
    try:
        with restored_after(variant.model):
            grads = get("loop")(variant.model, inputs, variant.targets, variant.loss_fn)
    except Unsupported as refused:
        return Reference(None, f"no reference: the float64 copy failed ({why}) and loop refuses the model",
                         refusal=str(refused))
    return Reference(grads, f"loop in {own} (the float64 copy failed: {why}); judged with {own}'s tolerance and the invariants")


@dataclass
class Judgement:
    """One method in one dtype on the user's batch."""

    status: str
    reason: str = ""
    max_relative: float | None = None
    max_per_sample: float | None = None
    tolerance: Tolerance | None = None
    invariants: dict[str, str | None] = field(default_factory=dict)  # name -> None (holds) or what failed
    unchecked: dict[str, str] = field(default_factory=dict)  # name -> why it could not be checked


def judge(method: Method, variant: Variant, reference: Reference, coupled: str | None = None) -> Judgement:
    """Run `method` on the variant's batch and judge it (never raises for the method's faults);
    the model is put back as it was afterwards, so that one method's damage never reaches the next.
    `coupled`: why the model's samples are coupled (`coupling.coupling`), which exempts the sum."""
    with restored_after(variant.model):
        return _judge(method, variant, reference, coupled)


def _judge(method: Method, variant: Variant, reference: Reference, coupled: str | None) -> Judgement:
    reason = method.unavailable_reason()
    if reason:
        return Judgement(UNAVAILABLE, reason)
    problem = method.problem(variant.model, variant.device, variant.dtype)
    if problem is not None:
        return Judgement(REFUSED, str(problem))
    tolerance = tolerance_for(variant.dtype)
    snapshot = ModelSnapshot.of(variant.model)
    touched: list[str] = []

    def compute(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method on copies of the batch (a method that writes into its inputs harms no other)."""
        own_call, own_targets = call.map(torch.clone), targets.clone()
        inputs = own_call if method.takes_call_args else own_call.to_user()
        grads = method.prepare(variant.model, variant.loss_fn, (inputs, own_targets))(inputs, own_targets)
        touched.extend(f"input {name}" for (name, mine), (_, given) in zip(own_call.tensors(), call.tensors())
                       if not same_values(mine, given))
        if not same_values(own_targets, targets):
            touched.append("the targets")
        return grads

    try:
        grads = compute(variant.call, variant.targets)
    except Unsupported as refused:
        return Judgement(REFUSED, str(refused))
    except Exception as error:  # noqa: BLE001 (a crash is reported, not raised: the table goes on)
        return Judgement(FAILED, f"{type(error).__name__}: {error}")
    result = Judgement(UNJUDGED, tolerance=tolerance)
    problems = []
    if reference.grads is not None:
        comparison = compare(grads, reference.grads)
        result.max_relative, result.max_per_sample = comparison.max_relative, comparison.max_per_sample
        if not comparison.within(tolerance):
            problems.append(f"against the reference: {comparison.describe(tolerance)}")
    result.invariants, result.unchecked = _invariants(variant, compute, grads, tolerance, snapshot, coupled)
    problems += [f"{invariants.NAMES[name]} fails: {what}" for name, what in result.invariants.items() if what]
    if touched:
        problems.append(f"it wrote into the batch it was given ({', '.join(dict.fromkeys(touched))})")
    if problems:
        result.status, result.reason = WRONG, "; ".join(problems)
    elif reference.grads is not None:
        result.status = CORRECT
    else:
        result.reason = reference.description
    return result


def _invariants(variant, compute, grads, tolerance, snapshot, coupled) -> tuple[dict[str, str | None], dict[str, str]]:
    found: dict[str, str | None] = {}
    unchecked: dict[str, str] = {"sum": coupled} if coupled else {}
    checks = {
        "sum": lambda: invariants.sum_equals_batch_gradient(variant, grads, tolerance),
        "batch_of_one": lambda: invariants.batch_of_one_equals_autograd(variant, compute, tolerance),
        "independence": lambda: invariants.other_samples_unchanged(variant, compute, grads, tolerance),
    }
    for name, check in checks.items():
        if name in unchecked:
            continue
        try:
            found[name] = check()
        except invariants.CannotCheck as why:
            unchecked[name] = str(why)
        except Unsupported as refused:  # the method refuses the batch the invariant needs
            unchecked[name] = f"the method refuses that batch: {refused.reason}"
        except Exception as error:  # noqa: BLE001 (the method crashed on that batch)
            found[name] = f"the method raised {type(error).__name__}: {error}"
    found["model_intact"] = invariants.model_left_as_found(snapshot, variant)  # after every call above
    if variant.call.batch_size < 3:
        unchecked["independence"] = "needs a batch of three or more"
    return found, unchecked
