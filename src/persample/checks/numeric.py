"""A method's own answer on the check batch, held against autograd.

Two identities of the definition gᵢ = ∂ℓᵢ/∂θ (sample i alone):
- weighted sum: for weights wᵢ of random sign and size, Σᵢ wᵢ gᵢ = ∂(Σᵢ wᵢ ℓᵢ)/∂θ. The random
  signs keep a wrong sample, a missing use of a parameter or a wrong scale from cancelling out:
  a discrepancy of 5% in any parameter or sample shows as a relative error far above rounding.
  Taken from the same forward pass as the method's answer, it holds whatever random numbers the
  forward drew (dropout).
- alone: gᵢ equals the gradient of sample i computed by itself (a batch of one), for every sample
  of the check batch; skipped when the forward draws random numbers (masks differ between the two).
"""
from __future__ import annotations

import torch

from ..assumptions import MATCHES_DEFINITION
from ..capabilities import Finding, refusal
from ..gradients import gradients
from ..reference import SELF_CHECK, compare
from ..state import preserved
from .context import CheckContext


def sample_weights(batch: int, device: torch.device) -> torch.Tensor:
    """wᵢ = ±(0.5 … 1.5), fixed by a seed so that a prepare is repeatable (float64)."""
    generator = torch.Generator().manual_seed(20261130)
    signs = torch.randint(0, 2, (batch,), generator=generator) * 2 - 1
    sizes = 0.5 + torch.rand(batch, generator=generator, dtype=torch.float64)
    return (signs * sizes).to(device)


def weighted_identity(
    context: CheckContext,
    per_sample: dict[str, torch.Tensor],
    losses: torch.Tensor,
    hint: str = "",
) -> None:
    """Raise unless Σᵢ wᵢ gᵢ equals the gradient of Σᵢ wᵢ ℓᵢ (`losses`' graph is consumed)."""
    params = context.params
    weights = sample_weights(losses.shape[0], losses.device)
    batch_grads = gradients((weights.to(losses.dtype) * losses).sum(), list(params.values()))
    got = {n: torch.einsum("b,b...->...", weights, per_sample[n].detach().double()).unsqueeze(0) for n in params}
    want = {n: g.detach().unsqueeze(0) for n, g in zip(params, batch_grads)}
    _judge(context, got, want, "Σᵢ wᵢ gᵢ against the gradient of Σᵢ wᵢ ℓᵢ", hint)
    context.ran("weighted sum")


def definition_check(context: CheckContext, per_sample: dict[str, torch.Tensor], hint: str = "") -> None:
    """Raise unless each sample's gradient equals its gradient alone (`per_sample`: the check batch's)."""
    if context.observation().draws_random_numbers:
        context.skipped("alone", "the forward draws random numbers, so a sample alone draws other ones")
        return
    params = context.params
    for row in range(context.batch_size):
        with preserved(context.check_model), torch.enable_grad():
            sample = context.check_call.select(row)
            loss = context.loss_fn(sample.call(context.check_model), context.check_targets[row : row + 1])[0]
            alone = gradients(loss, list(params.values()))
        got = {n: per_sample[n][row : row + 1].detach().double() for n in params}
        want = {n: g.detach().unsqueeze(0) for n, g in zip(params, alone)}  # its own dtype: `compare` reads its rounding
        _judge(context, got, want, f"sample {row}'s gradient against its gradient alone", hint)
    context.ran("alone")


def _judge(context: CheckContext, got: dict, want: dict, what: str, hint: str) -> None:
    comparison = compare(got, want)
    if comparison.within(SELF_CHECK):
        return
    detail = comparison.describe(SELF_CHECK).split(" (tolerance")[0]
    raise refusal(Finding(
        f"gives per-sample gradients that disagree with autograd on the example batch: {what}: {detail}"
        + (f". {hint}" if hint else "")
    ), MATCHES_DEFINITION.id, context.method_name)


def verify_answer(context: CheckContext, method) -> None:
    """For a method that does not check itself (a peer, a plugin): its answer on the whole example
    batch, the check rows against their gradients alone, and Σᵢ wᵢ gᵢ over every row against
    ∂(Σᵢ wᵢ ℓᵢ)/∂θ (one more forward and backward of the batch: a coupling of rows past the check
    rows fails it for a method that reads sample i off the batch). Raises `Unsupported` when it
    disagrees, or when it cannot be verified because the forward draws random numbers."""
    with context.checking():
        if context.observation().draws_random_numbers:
            raise refusal(Finding("cannot be verified on this model: its forward draws random numbers (dropout in "
                                  "training mode), so no sample's gradient can be recomputed alone"),
                          MATCHES_DEFINITION.id, method.name)
        step = method.prepare(context.model, context.loss_fn, (context.full_call, context.full_targets))
        rows = torch.tensor(context.rows)
        whole = step(context.full_call, context.full_targets)
        definition_check(context, {n: g[rows.to(g.device)] for n, g in whole.items()})
        with preserved(context.model), torch.enable_grad():  # every row: a coupling past the check rows
            losses = context.loss_fn(context.full_call.call(context.model), context.full_targets)
            weighted_identity(context, whole, losses)
