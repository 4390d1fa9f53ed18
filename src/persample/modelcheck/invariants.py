"""The definition's consequences a per-sample gradient must satisfy on the user's own model, each
catching a kind of silent bug the reference comparison could miss or explain poorly.

gᵢ is the gradient sample i would produce alone, unscaled, so: Σᵢ gᵢ is the gradient of the summed
loss (a method returning the mean's gradient, or scaled by B, fails it); a batch of one is plain
autograd; gᵢ does not depend on sample j, and a sample replaced by another gets that one's gradient
(leakage through the batch, or an answer cached from an earlier batch, fails it); and computing gᵢ
leaves the model as it was (parameters, buffers, .grad, requires_grad, hooks, modes).

Each check returns None when it holds, else one sentence saying what differs and where; it raises
`CannotCheck` when the check's own side (autograd's batch gradient) cannot be computed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..batch import CallArgs
from ..conformance.snapshot import ModelSnapshot
from ..contract import trainable_parameters
from ..gradients import gradients
from ..reference import Tolerance, compare
from ..state import preserved
from .subject import Variant

Grads = dict[str, torch.Tensor]
Compute = Callable[[CallArgs, torch.Tensor], Grads]  # the method on a batch (prepared there)

NAMES = {
    "sum": "Σᵢ gᵢ equals the batch gradient of the summed loss",
    "batch_of_one": "a batch of one equals plain autograd",
    "independence": "replacing one sample changes only its own gradient, to the new sample's",
    "model_intact": "the model is left as found",
}


class CannotCheck(Exception):
    """The invariant's own computation failed (not the method's): it is reported as unchecked."""


def batch_gradient(variant: Variant, call: CallArgs, targets: torch.Tensor) -> Grads:
    """∇θ Σᵢ ℓᵢ by one ordinary backward (dense), with the model's buffers and random state as found."""
    params = trainable_parameters(variant.model)
    try:
        with preserved(variant.model), torch.enable_grad():
            loss = variant.loss_fn(call.call(variant.model), targets).sum()
            grads = gradients(loss, list(params.values()))  # dense; .backward() where checkpointing needs it
    except Exception as error:  # noqa: BLE001
        raise CannotCheck(f"autograd's batch gradient failed ({type(error).__name__}: {error})") from error
    return dict(zip(params, grads))


def _as_batch_of_one(grads: Grads) -> Grads:
    return {name: g.unsqueeze(0) for name, g in grads.items()}


def _differs(got: Grads, want: Grads, tolerance: Tolerance) -> str | None:
    comparison = compare(got, want)
    return None if comparison.within(tolerance) else comparison.describe(tolerance)


def sum_equals_batch_gradient(variant: Variant, grads: Grads, tolerance: Tolerance) -> str | None:
    """Why Σᵢ gᵢ differs from the gradient of the summed loss beyond `tolerance` (saying when it is the mean
    loss's gradient instead), or None.
    """
    want = batch_gradient(variant, variant.call, variant.targets)
    summed = {name: g.sum(0) for name, g in grads.items()}
    problem = _differs(_as_batch_of_one(summed), _as_batch_of_one(want), tolerance)
    if problem is None:
        return None
    ratio = _scale(summed, want)
    if not ratio:
        return problem
    rows = next(iter(grads.values())).shape[0]
    mean = ": the gradient of the mean loss?" if abs(ratio * rows - 1) < 1e-2 else ""
    return f"{problem} (Σᵢ gᵢ is {ratio:.4g}× the batch gradient{mean})"


def _scale(got: Grads, want: Grads) -> float | None:
    """The least-squares factor from `want` to `got`."""
    dot = sum((got[n].double() * want[n].double()).sum().item() for n in want if n in got and got[n].shape == want[n].shape)
    norm = sum(want[n].double().square().sum().item() for n in want)
    return dot / norm if norm else None


def batch_of_one_equals_autograd(variant: Variant, compute: Compute, tolerance: Tolerance, sample: int = 0) -> str | None:
    """Why `compute` on sample `sample` alone differs from plain autograd on that batch of one beyond
    `tolerance`, or None.
    """
    call, targets = variant.call.select(sample), variant.targets[sample:sample + 1]
    want = _as_batch_of_one(batch_gradient(variant, call, targets))
    return _differs(compute(call, targets), want, tolerance)


def other_samples_unchanged(variant: Variant, compute: Compute, grads: Grads, tolerance: Tolerance) -> str | None:
    """Sample B-1 replaced by sample 0's row (inputs and target): the others' gradients stay, and
    the replaced one becomes sample 0's."""
    rows = variant.call.batch_size
    if rows < 3:
        return None  # with two samples, the changed row would be a copy of the only other one
    changed = torch.arange(rows, device=variant.targets.device)
    changed[-1] = 0
    got = compute(variant.call.select(changed), variant.targets[changed])
    keep = slice(0, rows - 1)
    problem = _differs({n: g[keep] for n, g in got.items()}, {n: g[keep] for n, g in grads.items()}, tolerance)
    if problem is not None:
        return f"after replacing sample {rows - 1}: the other samples' gradients moved: {problem}"
    problem = _differs({n: g[-1:] for n, g in got.items()}, {n: g[:1] for n, g in grads.items()}, tolerance)
    if problem is not None:
        return f"sample {rows - 1}, replaced by sample 0's row, did not get sample 0's gradient (a stale answer?): {problem}"
    return None


def model_left_as_found(snapshot: ModelSnapshot, variant: Variant) -> str | None:
    """The first three ways `variant.model` differs from `snapshot` (values, grads, modes, hooks, attributes)
    and how many more, or None.
    """
    differences = snapshot.differences(variant.model)
    if not differences:
        return None
    more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
    return "; ".join(differences[:3]) + more
