"""The float64 reference and the tolerance policy every method is judged by.

The reference is the `loop` method run in float64 on a float64 copy of the model and inputs
(the same values, upcast). A low-precision method is never judged against a reference in its own
precision: two bfloat16 methods can agree to 5e-4 while both sit ~3.5e-2 from the truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .batch import CallArgs, Inputs
from .contract import LossFn
from .state import copy_model


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the relative Frobenius error per parameter and on the worst single sample."""

    relative: float
    per_sample: float


# Keyed by the compute mode; "tf32" is float32 with TensorFloat-32 matrix units enabled.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(relative=1e-10, per_sample=1e-9),
    "float32": Tolerance(relative=1e-4, per_sample=1e-3),
    "tf32": Tolerance(relative=1e-2, per_sample=5e-2),
    # Half precisions: measured on the CPU (B=8, every zoo model), the float-exact loop itself sits
    # up to 3.2e-2 / 6.4e-2 (float16) and 1.1e-1 / 3.3e-1 (bfloat16) from float64 on conv nets,
    # where rounding flips ReLU kinks; these bounds still reject a gradient off by a factor of B.
    "float16": Tolerance(relative=5e-2, per_sample=1.5e-1),
    "bfloat16": Tolerance(relative=2e-1, per_sample=5e-1),
}

SELF_CHECK = Tolerance(relative=1e-3, per_sample=1e-2)
"""What a method's checks at prepare time allow (computed in float32 or wider): far above float32
rounding (~1e-6), far below the 5% discrepancy they must catch."""

VANISHING_FRACTION = 1e-2
"""A gradient smaller than this fraction of the largest parameter gradient counts as vanishing:
its error is scaled by that floor, not by its own (near-zero) norm."""

SIGNAL_FRACTION = 1e-10
"""Below the floor a parameter's gradients may be off by rounding, but not missing: when a method's
are all exactly zero and the reference's norm is above this fraction of the largest (far above
float64's rounding), the parameter was left out of the computation (a zeroed branch, a detached
path) and the comparison says so."""


def mode_name(dtype: torch.dtype, tf32: bool = False) -> str:
    """"float32", "bfloat16", ... or "tf32" for float32 with TF32 enabled."""
    name = str(dtype).removeprefix("torch.")
    return "tf32" if tf32 and dtype == torch.float32 else name


def tolerance_for(dtype: torch.dtype | str, tf32: bool = False) -> Tolerance:
    """The tolerance for results computed in `dtype` (a dtype, or a mode name such as "tf32" or
    "autocast-bf16", which takes the tolerance of the precision it computes in)."""
    key = dtype if isinstance(dtype, str) else mode_name(dtype, tf32)
    if key not in TOLERANCES:
        from .modes import MODES

        key = MODES[key].tolerance if key in MODES and MODES[key].tolerance else key
    if key not in TOLERANCES:
        raise ValueError(f"no tolerance for {key!r}; known modes: {', '.join(TOLERANCES)}")
    return TOLERANCES[key]


def reference_grads(
    model: nn.Module, inputs: Inputs, targets: torch.Tensor, loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Per-sample gradients from the loop method on a float64 copy of model, inputs, targets."""
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
    """How far per-sample gradients are from the reference, per parameter and per sample."""

    relative: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, float] = field(default_factory=dict)
    worst_sample: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def max_relative(self) -> float:
        return max(self.relative.values(), default=0.0)

    @property
    def max_per_sample(self) -> float:
        return max(self.per_sample.values(), default=0.0)

    def within(self, tolerance: Tolerance) -> bool:
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
    """Relative Frobenius error per parameter and worst per-sample relative error, in float64."""
    result = Comparison()
    missing, extra = reference.keys() - grads.keys(), grads.keys() - reference.keys()
    if missing:
        result.problems.append(f"missing gradients for {sorted(missing)}")
    if extra:
        result.problems.append(f"unexpected gradients for {sorted(extra)} (frozen or unknown)")
    names = [n for n in reference if n in grads]
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
        if floor and not got.any() and norm > SIGNAL_FRACTION * floor / VANISHING_FRACTION and ref[name].abs().max().item() > underflow:
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
