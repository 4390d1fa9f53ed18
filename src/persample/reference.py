"""The float64 reference and the one comparison every method, kernel and translation is judged by.

The reference is the `loop` method run in float64 on a float64 copy of the model and inputs
(the same values, upcast). A low-precision method is never judged against a reference in its own
precision: two bfloat16 methods can agree to 5e-4 while both sit ~3.5e-2 from the truth.

`compare` measures the error (relative Frobenius norms per parameter and per sample, with vanishing
gradients floored and a missing parameter flagged); `Comparison.within` holds it to a `Tolerance`
from the modes' one table (`persample.modes`: `tolerance_for(mode, quantity)`, `SELF_CHECK`), which
this module re-exports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .batch import CallArgs, Inputs
from .contract import LossFn
from .modes import SELF_CHECK, Tolerance, tolerance_for
from .state import copy_model

__all__ = ["Comparison", "SELF_CHECK", "SIGNAL_FRACTION", "Tolerance", "VANISHING_FRACTION", "compare",
           "reference_grads", "tolerance_for"]


VANISHING_FRACTION = 1e-2
"""A gradient smaller than this fraction of the largest parameter gradient counts as vanishing:
its error is scaled by that floor, not by its own (near-zero) norm."""

SIGNAL_FRACTION = 1e-10
"""Below the floor a parameter's gradients may be off by rounding, but not missing: when a method's
are all exactly zero and the reference's norm is above this fraction of the largest (far above
float64's rounding), the parameter was left out of the computation (a zeroed branch, a detached
path) and the comparison says so. A reference computed in a narrower dtype (a check against autograd
in the model's float32) has its own rounding: the fraction is then at least `SIGNAL_EPS` of that
dtype's machine epsilon (a 2-token sample scoring one position that attends only to itself has
exact-zero query/key gradients, which float32 autograd gives as 3e-10 of the largest)."""

SIGNAL_EPS = 10


def reference_grads(
    model: nn.Module, inputs: Inputs, targets: torch.Tensor, loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Per-sample gradients from the loop method on a float64 copy of model, inputs, targets:
    {parameter name: (B, *param.shape)} in float64, on the model's device. The model is not changed
    (hooks on its parameter tensors are carried over to the copy). Raises what `loop` raises
    (`LossNotPerSample` for a loss that depends on the batch)."""
    from .methods.registry import get

    model64 = copy_model(model).to(torch.float64)
    copies = dict(model64.named_parameters())
    for name, param in model.named_parameters():  # a deep copy drops hooks on tensors; the gradient includes them
        for hook in (getattr(param, "_backward_hooks", None) or {}).values():
            copies[name].register_hook(hook)
    inputs64 = CallArgs.of(inputs).map(lambda x: x.double() if x.is_floating_point() else x)
    targets64 = targets.double() if targets.is_floating_point() else targets
    return get("loop")(model64, inputs64.to_user(), targets64, loss_fn)


@dataclass
class Comparison:
    """How far per-sample gradients are from the reference, per parameter and per sample.

    `relative`: {parameter: ‖ĝ − g‖_F / max(‖g‖_F, floor)} over the whole batch; `per_sample`:
    {parameter: the largest such ratio of one sample}, at `worst_sample` (its index); `problems`:
    what cannot be measured (missing or unexpected parameters, wrong shapes, NaN or inf, a parameter
    left out of the computation). Errors are dimensionless relative errors.
    """

    relative: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, float] = field(default_factory=dict)
    worst_sample: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def max_relative(self) -> float:
        """The largest relative error over the parameters (0.0 for none)."""
        return max(self.relative.values(), default=0.0)

    @property
    def max_per_sample(self) -> float:
        """The largest per-sample relative error over the parameters and samples (0.0 for none)."""
        return max(self.per_sample.values(), default=0.0)

    def within(self, tolerance: Tolerance) -> bool:
        """No problem, and both the largest relative and the largest per-sample error within `tolerance`."""
        return (
            not self.problems
            and self.max_relative <= tolerance.relative
            and self.max_per_sample <= tolerance.per_sample
        )

    def describe(self, tolerance: Tolerance) -> str:
        """What was expected, what came, and where (parameter, sample index)."""
        lines = list(self.problems)
        if self.relative:
            name = max(self.relative, key=self.relative.get)
            lines.append(
                f"relative error {self.max_relative:.3g} (tolerance {tolerance.relative:g}) "
                f"worst in parameter {name!r}"
            )
        if self.per_sample:
            name = max(self.per_sample, key=self.per_sample.get)
            lines.append(
                f"per-sample error {self.max_per_sample:.3g} (tolerance {tolerance.per_sample:g}) "
                f"worst in parameter {name!r}, sample {self.worst_sample[name]}"
            )
        return "; ".join(lines)


def compare(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> Comparison:
    """Measure `grads` against `reference`, both {parameter name: (B, *param.shape)}, in float64 on the CPU.

    Per parameter p: relative = ‖ĝ_p − g_p‖_F / max(‖g_p‖_F, f) with f = `VANISHING_FRACTION` ×
    maxₚ‖g_p‖_F; per sample i: ‖ĝ_pi − g_pi‖ / max(‖g_pi‖, `VANISHING_FRACTION` × maxₚ‖g_pi‖). A
    vanishing gradient is thus judged on the scale of the largest one, not its own near-zero norm
    (where rounding is all there is). A parameter whose gradients are all exactly zero while the
    reference's are not (above `SIGNAL_FRACTION` of the largest, or `SIGNAL_EPS` epsilons of the reference's
    dtype, and above the dtype's underflow)
    is reported as left out of the computation, not measured. Returns a `Comparison`; never raises
    for a wrong answer (the problems are in it); `reference`'s tensors must share B. The conformance
    cells, the checks at prepare time, `persample check`, the specification assertions
    (`conformance/assertions.py`) and the kernel, layer-rule, translation and norm tests all measure
    with it, each against its mode's tolerance for the quantity compared (`persample.modes`).
    """
    result = Comparison()
    missing, extra = reference.keys() - grads.keys(), grads.keys() - reference.keys()
    if missing:
        result.problems.append(f"missing gradients for {sorted(missing)}")
    if extra:
        result.problems.append(f"unexpected gradients for {sorted(extra)} (frozen or unknown)")
    names = [n for n in reference if n in grads]
    signal = max([SIGNAL_FRACTION] + [SIGNAL_EPS * torch.finfo(reference[n].dtype).eps for n in names
                                      if reference[n].is_floating_point()])
    ref = {n: reference[n].detach().double().cpu() for n in names}
    floor = VANISHING_FRACTION * max((r.norm().item() for r in ref.values()), default=0.0)
    sample_norms = torch.stack([r.reshape(r.shape[0], r[0].numel() if r.shape[0] else 0).norm(dim=1) for r in ref.values()]) if ref else None
    sample_floor = VANISHING_FRACTION * sample_norms.max(0).values if ref else None
    empty = bool(ref) and next(iter(ref.values())).shape[0] == 0
    for name in names:
        got = grads[name].detach()
        if tuple(got.shape) != tuple(ref[name].shape):
            result.problems.append(
                f"{name}: shape {tuple(got.shape)}, expected {tuple(ref[name].shape)} (B, *param.shape)"
            )
            continue
        underflow = 1e3 * torch.finfo(got.dtype).tiny if got.is_floating_point() else 0.0
        got = got.double().cpu()
        if not torch.isfinite(got).all():
            result.problems.append(f"{name}: non-finite values (NaN or inf)")
            continue
        norm = ref[name].norm().item()
        if floor and not got.any() and norm > signal * floor / VANISHING_FRACTION and ref[name].abs().max().item() > underflow:
            result.problems.append(f"{name}: every per-sample gradient is exactly zero, but the reference's are not "
                                   f"(norm {norm:.3g}, {norm * VANISHING_FRACTION / floor:.2g} of the largest parameter's): "
                                   "the parameter was left out of the computation")
            continue
        diff = got - ref[name]
        result.relative[name] = diff.norm().item() / max(ref[name].norm().item(), floor, 1e-300)
        if empty:  # a batch of none: the shapes are the whole answer
            continue
        per = diff.reshape(diff.shape[0], -1).norm(dim=1) / torch.maximum(
            ref[name].reshape(diff.shape[0], -1).norm(dim=1), sample_floor
        ).clamp_min(1e-300)
        result.per_sample[name] = per.max().item()
        result.worst_sample[name] = int(per.argmax())
    return result
