"""Shared checks of the kernel tests: NaN-poisoned outputs, closeness to the float64 rule and to the
float64 loop reference, with the assertion helpers' own frames hidden."""
from __future__ import annotations

import torch
from torch import nn

from persample.methods.kernel import KernelMethod
from persample.modes import TRANSLATION
from persample.reference import compare, reference_grads, tolerance_for

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = (torch.float32, torch.bfloat16)
# A kernel against the shared rule is a translation in the kernel's precision: its tolerances (and
# the measurements behind them) are the modes' `translation` row (persample.modes).


def poisoned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel fails to write stays NaN."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def poisoned_outputs(module: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    return {name: poisoned((batch, *p.shape), p.dtype) for name, p in module.named_parameters(recurse=False)}


def coarsest(*dtypes: torch.dtype) -> torch.dtype:
    """The lowest precision among `dtypes` (mixed inputs are checked at the coarser one's tolerance)."""
    return next(d for d in (torch.bfloat16, torch.float16, torch.float32) if d in dtypes)


def assert_matches_rule(
    got: dict[str, torch.Tensor], rule: dict[str, torch.Tensor], dtype: torch.dtype, *inputs: torch.dtype
) -> None:
    """The kernel's gradients (in `dtype`) against the shared rule evaluated in float64 on the same
    inputs, within the translation tolerance of the coarsest of `dtype` and the inputs' dtypes `inputs`."""
    __tracebackhide__ = True
    for name, value in got.items():
        assert value.dtype == dtype, f"{name}: dtype {value.dtype}, expected {dtype}"
    tolerance = tolerance_for(coarsest(dtype, *inputs), TRANSLATION)
    result = compare(got, rule)
    assert result.within(tolerance), f"kernel vs float64 rule: {result.describe(tolerance)}"


def projection_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ outputs ⊙ targets per sample, so the output gradient is exactly `targets`."""
    return (outputs * targets).flatten(1).sum(1)


def assert_method_matches_reference(model: nn.Module, inputs, targets, loss_fn=projection_loss) -> dict[str, str]:
    """Run the kernel method, compare with the float64 loop reference; returns the placement."""
    __tracebackhide__ = True
    method = KernelMethod()
    step = method.prepare(model, loss_fn, (inputs, targets))
    grads = step(inputs, targets)
    dtype = next(model.parameters()).dtype
    tolerance = tolerance_for(dtype)
    result = compare(grads, reference_grads(model, inputs, targets, loss_fn))
    assert result.within(tolerance), f"kernel method vs float64 reference ({dtype}): {result.describe(tolerance)}"
    return step.placement
