"""What a rule-based step checks on every call, cheaply: that nothing changed since it was prepared.

The checks at prepare time see the example batch. A model can take another path on a later batch
(a branch on a batch-level value) or after an attribute changed, and use a parameter outside its
layer there. Every call of hooks and kernel therefore also takes the batch gradient in the same
backward pass and compares it with the sum over the batch of what the rules saw, computed by each
rule's batch formula (one matrix product for a Linear: no per-sample tensor is read again); expand
asks autograd for the gradient reaching each parameter outside its expanded layer calls, which
must be none. A failure raises `StaleStep`, and `per_sample_grads` prepares again on that batch (so
its checks refuse, or `auto` picks another method). Couplings between samples are not what this
catches: they are looked for when preparing, on the whole example batch.
"""
from __future__ import annotations

import torch

from ..assumptions import MATCHES_DEFINITION
from ..errors import StaleStep
from ..modes import MODES, mode_name
from ..reference import VANISHING_FRACTION

FIX = ("the model behaves otherwise than on the batch this step was prepared with (a branch on the "
       "batch's values, or an attribute changed since): prepare again on this batch, or use vmap, jax or loop")


class BatchResidual:
    """Autograd's batch gradient of each parameter, minus what each captured call's rule accounts
    for (subtracted in place); `check` raises `StaleStep` where more than rounding remains."""

    def __init__(self, params: dict[str, torch.Tensor], autograd: dict[str, torch.Tensor | None]) -> None:
        self.names = {id(p): name for name, p in params.items()}
        self.left = {id(p): None if autograd.get(name) is None else _dense(autograd[name]).detach() for name, p in params.items()}
        self.scale = {key: 0.0 if g is None else torch.linalg.vector_norm(g, dtype=torch.float64) for key, g in self.left.items()}
        self.dtype = {id(p): p.dtype for p in params.values()}

    @torch.no_grad()
    def account(self, param: torch.Tensor, summed: torch.Tensor) -> None:
        """Subtract `summed`, what a rule says `param`'s per-sample gradients sum to over one call, from
        autograd's batch gradient.
        """
        key = id(param)
        if self.left[key] is None:
            self.left[key] = -summed.to(self.dtype[key])
        else:
            self.left[key].sub_(summed.to(self.left[key].dtype))

    def check(self, method: str) -> None:
        """Raise `StaleStep` (assumption matches-definition) naming the parameter whose remaining gradient
        exceeds the guard's tolerance of its dtype, relative to its batch gradient's norm (small
        norms floored at a fraction of the largest).
        """
        names, left, scale = [], [], []
        for key, remaining in self.left.items():
            if remaining is None:
                continue
            names.append(self.names[key])
            left.append(torch.linalg.vector_norm(remaining, dtype=torch.float64))
            scale.append(torch.as_tensor(self.scale[key], dtype=torch.float64, device=left[-1].device))
        if not names:
            return
        left_, scale_ = torch.stack(left), torch.stack(scale)
        scale_ = torch.maximum(scale_, VANISHING_FRACTION * scale_.max()).clamp_min(1e-30)
        tolerance = torch.tensor([_tolerance(self.dtype[k]) for k in self.left if self.left[k] is not None],
                                 dtype=torch.float64, device=scale_.device)
        ratios = left_ / (scale_ * tolerance)
        if ratios.max().item() > 1:
            worst = int(ratios.argmax())
            raise StaleStep(
                f"on this batch parameter {names[worst]} gets a gradient that its per-sample gradients do not account for "
                f"({(left_[worst] / scale_[worst]).item():.3g} of it): {FIX}", method=method,
                assumption=MATCHES_DEFINITION.id)


def _tolerance(dtype: torch.dtype) -> float:
    """The guard's tolerance (`Tolerances.guard` in `persample.modes`) for a parameter in `dtype`:
    its precision's, bfloat16's for a dtype without a mode or under autocast (which may compute in it)."""
    loosest = MODES["bfloat16"].tolerances.guard
    mode = MODES.get(mode_name(dtype))
    tolerance = mode.tolerances.guard if mode is not None else loosest
    if torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
        tolerance = max(tolerance, loosest)
    return tolerance


def _dense(grad: torch.Tensor) -> torch.Tensor:
    return grad if grad.layout == torch.strided else grad.to_dense()  # Embedding(sparse=True)


def check_no_gradient_outside(grads: dict[str, torch.Tensor | None], method: str) -> None:
    """Gradients that reached parameters outside their layers' expanded calls must be none."""
    for name, grad in grads.items():
        if grad is not None and grad.abs().max().item() > 0:
            raise StaleStep(f"on this batch parameter {name} receives gradient outside its layer's calls: {FIX}",
                            method=method, assumption=MATCHES_DEFINITION.id)


def check_sum_against_autograd(model: torch.nn.Module, loss_fn, call, targets: torch.Tensor,
                               grads: dict[str, torch.Tensor], method: str) -> None:
    """The guard of a method that does not check itself (a peer, a plugin) when `auto` runs it:
    Σᵢ gᵢ against autograd's gradient of the summed loss on this very batch (one more forward and
    backward), within the guard tolerance (`persample.modes`) of the parameter's norm (the vanishing floor as in `BatchResidual`).
    Raises `StaleStep` so that `auto` chooses again on this batch, where its checks see the fault."""
    from ..contract import trainable_parameters
    from ..gradients import gradients
    from ..state import preserved

    params = {name: p for name, p in trainable_parameters(model).items() if name in grads}
    with preserved(model), torch.enable_grad():
        loss = loss_fn(call.call(model), targets).sum()
        batch = gradients(loss, list(params.values()))
    residual = BatchResidual(params, {name: g for name, g in zip(params, batch)})
    for name, param in params.items():
        residual.account(param, grads[name].sum(0))
    residual.check(method)
