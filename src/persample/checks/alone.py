"""The whole batch computes each sample as that sample alone would: in its values and in its gradient.

The methods that differentiate the batch once (hooks, expand, kernel) return, for sample i, what
flows into row i of each layer from the loss of the whole batch. That is the gradient of sample i
alone only if (1) the forward computes row i as it would for sample i alone, whatever the batch's
size and other samples (a forward that scales by `x.shape[0]`, or normalises by the batch size,
computes another function in a batch than alone), and (2) row i of each layer's output reaches only
sample i's loss, also where the forward values do not show it (`h + (s - s.detach())` with `s` a sum
over rows: values unchanged, gradients coupled). vmap, jax and loop compute each sample alone and
need neither. Two looks on the example batch, both on the whole batch (a coupling may involve rows
past the check rows only):

- `samples_alone`: the check rows, each run alone (a batch of one), give the outputs and losses
  they have in the whole batch. When the forward draws random numbers (dropout in training mode),
  a sample alone draws other ones: the comparison is then made with the model in eval mode, and
  skipped if that forward still draws random numbers.
- `whole_batch_gradients`: from the instrumented forward's graph, two backward passes: of Σᵢ ℓᵢ
  (what the methods differentiate) and of Σᵢ wᵢ ℓᵢ for weights wᵢ of random sign. Without
  coupling, each layer's output gradient of the second is row by row wᵢ times that of the first
  (the layer is named where it is not). Then Σᵢ wᵢ gᵢ, computed without any per-sample tensor by
  each rule's `grad_batch` on the output gradient rows scaled by wᵢ, must equal autograd's
  ∂(Σᵢ wᵢ ℓᵢ)/∂θ: the matches-definition identity on the whole batch, not only the check rows.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..assumptions import BATCH_FIRST, OWN_LAYER
from ..capabilities import Finding, refusal
from ..gradients import needs_backward
from ..reference import SELF_CHECK, VANISHING_FRACTION, compare
from ..rules import rule_for
from ..state import preserved, rng_state, same_rng_state
from .context import CheckContext
from .loss import output_batch_dims, _sample
from .numeric import sample_weights

RELATIVE = 1e-4  # a sample alone and in the batch: the same values up to rounding (float32 or wider)

ALONE_FIX = (
    "per-sample gradients are those of each sample alone (a batch of one), which this method reads off "
    "the whole batch; vmap, jax and loop compute each sample alone"
)


def samples_alone(context: CheckContext) -> None:
    """Check that each check row, run alone (a batch of one, under no_grad), has the outputs (where
    they carry a batch dimension) and the loss it has in the whole example batch, within `RELATIVE`.
    Returns None (recording the check as ran or skipped in `context.report`); raises `Unsupported`
    (assumption `batch-first-layers`) naming the sample and what differs."""
    observed = context.observation()
    batch = context.full_size
    if batch < 2:
        context.skipped("alone in the batch", "a batch of one is every sample alone")
        return
    dims = output_batch_dims(context) or []
    model, loss_fn, call, targets = context.model, context.loss_fn, context.full_call, context.full_targets
    random = observed.draws_random_numbers
    with torch.no_grad(), preserved(model), _eval_if(model, random):
        if random:
            before = rng_state(model)
            outputs = call.call(model)
            losses = loss_fn(outputs, targets)
            if not same_rng_state(before, rng_state(model)):
                context.skipped("alone in the batch", "the forward draws random numbers, also in eval mode")
                return
        else:
            outputs, losses = observed.outputs, observed.losses
        losses = losses.detach().double()
        typical = losses.abs().mean().item()
        for i in context.rows:
            try:
                out = call.select(i).call(model)
                loss = loss_fn(out, targets[i : i + 1]).detach().double().reshape(-1)
            except Exception as error:  # noqa: BLE001 (a model that cannot run one sample: nothing to compare)
                context.skipped("alone in the batch", f"a sample alone fails ({type(error).__name__}: {error})")
                return
            if loss.numel() != 1:
                context.skipped("alone in the batch", f"the loss of a sample alone has shape {tuple(loss.shape)}")
                return
            value, expected = loss.item(), losses[i].item()
            if abs(value - expected) > RELATIVE * max(abs(value), abs(expected), typical, 1e-12):
                raise _not_alone(context, i, batch, f"its loss is {expected:.6g} in the batch but {value:.6g} alone")
            change = _outputs_differ(_sample(outputs, dims, i) if dims else None, out, dims)
            if change is not None:
                raise _not_alone(context, i, batch, f"its outputs differ from its outputs alone (by {change:.2g}, relative)")
    context.ran("alone in the batch" + (" (eval mode)" if random else ""))


def _not_alone(context: CheckContext, i: int, batch: int, what: str):
    return refusal(Finding(
        f"computes sample {i} otherwise in a batch of {batch} than alone: {what}. The forward depends on the "
        f"batch (on its size, e.g. x.shape[0] or a normalisation by the batch size, or on other samples); "
        f"{ALONE_FIX}"), BATCH_FIRST.id, context.method_name)


def _outputs_differ(in_batch, alone, dims: list[int | None]) -> float | None:
    if in_batch is None:
        return None
    pairs = zip(tree_leaves(in_batch), tree_leaves(alone), dims)
    for x, y, dim in pairs:
        if dim is None or not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            continue
        if x.shape != y.shape or not x.is_floating_point() or not x.numel():
            continue  # a model that squeezes a batch of one: its loss is compared instead
        scale = max(x.abs().max().item(), y.abs().max().item(), 1e-30)
        change = (x.double() - y.double()).abs().max().item()
        if change > RELATIVE * scale:
            return change / scale
    return None


def _rows_not_proportional(got: torch.Tensor, want: torch.Tensor) -> tuple[int, float] | None:
    """(sample, relative error) of the worst row of `got` against `want`, both (B, n), when beyond
    `SELF_CHECK` (each row against its own norm, floored at `VANISHING_FRACTION` of the largest row:
    a row whose gradient nearly cancels is judged on the batch's scale); None within it."""
    norms = want.norm(dim=1)
    floor = (VANISHING_FRACTION * norms.max()).clamp_min(1e-300)
    errors = (got - want).norm(dim=1) / torch.maximum(norms, floor)
    whole = (got - want).norm() / want.norm().clamp_min(1e-300)
    worst = int(errors.argmax())
    if errors[worst] > SELF_CHECK.per_sample or whole > SELF_CHECK.relative:
        return worst, errors[worst].item()
    return None


@contextmanager
def _eval_if(model: nn.Module, switch: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()] if switch else []
    if switch:
        model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def whole_batch_gradients(context: CheckContext, weighted_sum: bool = True) -> None:
    """Raise unless, on the whole example batch, each captured layer's output gradient row i comes
    from sample i's loss alone (`batch-first-layers`, naming the layer), and, with `weighted_sum`
    (the methods whose answer is the rules applied to the output gradients: hooks, kernel), Σᵢ wᵢ gᵢ
    by the rules' batch formulas equals ∂(Σᵢ wᵢ ℓᵢ)/∂θ (`parameters-through-own-layer`: what else
    would differ). expand's answer is autograd through its expanded layers, which also follows a
    derivative taken in forward: what it gives sample i is what flows through row i of each layer,
    so the row comparison is its whole-batch check (its Σᵢ wᵢ gᵢ would cost a full step's B×P).
    Returns None; raises `Unsupported` (`batch-first-layers` naming the layer and the sample, or
    `parameters-through-own-layer` naming the parameter). Consumes nothing: the observation's
    graph is retained for the checks that follow."""
    observed = context.observation()
    batch, losses = context.full_size, observed.losses
    calls = [c for c in observed.calls
             if c.grad_enabled and isinstance(c.output, torch.Tensor) and c.output.requires_grad]
    why = ("a batch of one has no other sample" if batch < 2 else "no layer output carries a gradient" if not calls
           else "a layer's output is modified in place" if any(c.output._version != c.output_version for c in calls)
           else "the graph needs .backward() (reentrant checkpointing)" if needs_backward(losses) else None)
    if why:
        context.skipped("whole-batch gradients", why)
        return
    params = context.params
    weights = sample_weights(batch, losses.device)
    outputs = [c.output for c in calls]
    plain = torch.autograd.grad(losses.sum(), outputs, allow_unused=True, retain_graph=True)
    both = torch.autograd.grad((weights.to(losses.dtype) * losses).sum(), outputs + list(params.values()),
                               allow_unused=True, retain_graph=True)
    weighted, want = both[: len(calls)], both[len(calls):]
    summed: dict[int, torch.Tensor] = {}
    without_formula: set[int] = set()
    for call, g, gw in zip(calls, plain, weighted):
        if g is None or gw is None:
            continue
        rows = g.reshape(batch, -1)
        found = _rows_not_proportional(gw.reshape(batch, -1).double(), rows.double() * weights.double()[:, None])
        if found is not None:
            sample, error = found
            raise refusal(Finding(
                f"gets, in its output row of sample {sample}, gradient from other samples' losses (the gradient of "
                f"Σᵢ wᵢ ℓᵢ is not wᵢ times that of Σᵢ ℓᵢ row by row: off by {error:.3g}, relative): "
                "samples are coupled in the backward pass, even where the forward values do not show it "
                f"(e.g. h + (s - s.detach()) with s a sum over the batch); {ALONE_FIX}",
                call.qualname, call.module), BATCH_FIRST.id, context.method_name)
        if not weighted_sum:
            continue
        rule = rule_for(call.module)
        trainable = rule.trainable(call.module) if rule is not None else frozenset()
        if rule is None or rule.grad_batch is None:
            without_formula.update(id(call.module.get_parameter(local)) for local in trainable)
            continue
        scaled = (rows * weights.to(rows.dtype)[:, None]).reshape(g.shape)
        for local, grad in rule.grad_batch(call.module, call.inputs, scaled, trainable).items():
            key = id(call.module.get_parameter(local))
            summed[key] = grad if key not in summed else summed[key] + grad
    context.ran("whole-batch output gradients")
    got, expected = {}, {}
    for (name, param), grad in zip(params.items(), want):
        if id(param) in without_formula or id(param) not in summed:
            continue  # a layer without a batch formula: its rows were compared above
        grad = torch.zeros_like(param) if grad is None else grad
        got[name] = summed[id(param)].detach().double().unsqueeze(0)
        expected[name] = (grad if grad.layout == torch.strided else grad.to_dense()).detach().double().unsqueeze(0)
    if not got:
        return
    comparison = compare(got, expected)
    if not comparison.within(SELF_CHECK):
        raise refusal(Finding(
            "gives per-sample gradients that disagree with autograd on the whole example batch: Σᵢ wᵢ gᵢ (by the "
            "layers' batch formulas) against the gradient of Σᵢ wᵢ ℓᵢ: "
            + comparison.describe(SELF_CHECK).split(" (tolerance")[0]
            + ". A parameter reaches the loss other than through its layer's calls on some sample"), OWN_LAYER.id,
            context.method_name)
    context.ran("whole-batch weighted sum")
