"""Each layer with a rule sees the batch on dim 0, row i computed from sample i alone.

A layer's rule reads row i of its input and of its output gradient as sample i's. That fails
silently when a layer is called time-major ((T, B, ...), even with T == B), on a flattened batch,
on an input shared by every sample (positions), after samples were mixed, or when a sample's row
depends on its place in the batch (a capacity limit, a mask over batch positions). Three looks
settle it on the whole example batch:
- every captured input and output has the batch size on dim 0;
- when one sample is replaced by another, no other sample's rows change. The samples replaced are
  the first and the last (a coupling may run one way only), those with the largest and smallest
  inputs, and those holding the largest value of any captured input or output (a branch or a
  scale on a batch extreme);
- when the batch is rotated by one, every captured row moves with its sample (skipped when the
  forward draws random numbers: its masks do not move).
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ..assumptions import BATCH_FIRST
from ..capabilities import Finding, refusal
from ..observe import LayerCall, observe
from ..rules import layer_rule
from ..state import preserved
from .context import CheckContext

RELATIVE = 1e-5  # rows of other samples are recomputed from the same values: equal up to rounding
PERTURBED = 8  # samples replaced, at most


def probe_batch_layout(context: CheckContext) -> None:
    """Raise the `batch-first-layers` refusal for the first captured call that breaks it."""
    observed = context.observation()
    batch = context.full_size
    calls = [c for c in observed.calls if c.grad_enabled]
    for call in calls:
        finding = _shape_finding(call, batch)
        if finding is not None:
            raise refusal(finding, BATCH_FIRST.id, context.method_name)
    context.ran("batch on dim 0")
    _check_shared_calls_broadcast(context, observed, calls)
    pairs = _replacements(context, calls)
    if not pairs:
        context.skipped("sample independence", "the batch has fewer than two different samples")
        return
    for j, k in pairs:
        again = _captured(context, context.full_call.map(lambda t: _replace_row(t, j, k)), _replace_row(context.full_targets, j, k), calls)
        for before, after in zip(calls, again):
            for what, a, b in zip(("input", "output"), batch_first(before), batch_first(after)):
                change = _other_rows_change(a, b, j)
                if change is not None:
                    raise refusal(Finding(
                        f"is called with an {what} whose rows of other samples changed (by {change:.2g}, relative) "
                        f"when only sample {j} changed: row i is not computed from sample i alone. Either the batch "
                        "is not on dim 0 (a time-major layer, e.g. with T == B) or samples were mixed before it (a "
                        "batch statistic, a shift along the batch, a branch on a batch-level value)",
                        before.qualname, before.module), BATCH_FIRST.id, context.method_name)
    context.ran("sample independence")
    if observed.draws_random_numbers:
        context.skipped("place in the batch", "the forward draws random numbers, which do not move with the samples")
        return
    rolled = _captured(context, context.full_call.map(lambda t: t.roll(1, 0)), context.full_targets.roll(1, 0), calls)
    for before, after in zip(calls, rolled):
        for what, a, b in zip(("input", "output"), batch_first(before), batch_first(after)):
            change = _rows_not_moved(a, b)
            if change is not None:
                raise refusal(Finding(
                    f"is called with an {what} whose rows did not move with their samples when the batch was "
                    f"rotated (by {change:.2g}, relative): a sample's row depends on its place in the batch (a "
                    "capacity limit, a mask over batch positions, a cumulative sum along the batch)",
                    before.qualname, before.module), BATCH_FIRST.id, context.method_name)
    context.ran("place in the batch")


def _check_shared_calls_broadcast(context: CheckContext, observed, calls: list[LayerCall]) -> None:
    """A layer called on arguments every sample shares (positions, one row) is recorded, and handed on,
    expanded to the batch (`observe.broadcast_shared`), so its output gradient is per sample. That
    is the model's own computation only where the model broadcasts the one-row output over the batch:
    the losses of the forward with the expansion must equal those of the plain model."""
    shared = [c for c in calls if c.shared]
    if not shared:
        return
    # with gradients enabled, as the observation ran: under no_grad some layers take other paths
    # (TransformerEncoder's nested-tensor fast path)
    with torch.enable_grad(), preserved(context.model), torch.random.fork_rng(devices=[]):
        plain = context.loss_fn(context.full_call.call(context.model), context.full_targets).detach()
    expanded = observed.losses.detach()
    scale = max(plain.abs().max().item(), 1e-30) if plain.numel() else 1.0
    if (plain.shape != expanded.shape or (observed.draws_random_numbers is False
                                          and (plain - expanded).abs().max().item() > RELATIVE * 10 * scale)):
        raise refusal(Finding(
            "is called on arguments every sample shares (one row on dim 0, e.g. position ids), and the model does "
            "not broadcast its output over the batch unchanged: with the output expanded to each sample the losses "
            "differ, so its per-sample gradients cannot be taken from a per-sample output gradient",
            shared[0].qualname, shared[0].module), BATCH_FIRST.id, context.method_name)
    context.ran("shared calls broadcast")


def _captured(context: CheckContext, call, targets, calls: list[LayerCall]) -> list[LayerCall]:
    """The captured calls of another forward, paired with `calls` (refused if they differ)."""
    again = observe(context.model, context.loss_fn, call, targets, capture=context.capture, watch=False)
    repeated = [c for c in again.calls if c.grad_enabled]
    if [c.module for c in repeated] != [c.module for c in calls]:
        raise refusal(Finding(
            "the layers with rules were called in a different order or number when the batch changed: the "
            "model's control flow depends on the batch's values, so the rules cannot pair a layer's input with "
            "its output gradient"), BATCH_FIRST.id, context.method_name)
    return repeated


def batch_first(call: LayerCall) -> tuple[object, object]:
    """(input, output) of a captured call with the sample on dim 0: the layer's first argument and its
    output, or, for a layer whose rule says where its batch is (`LayerRule.batch_first`: time-major
    attention and recurrent layers), every argument and output through that view."""
    rule = layer_rule(call.module)
    if rule is None or rule.batch_first is None:
        return call.input, call.output
    inputs, output = rule.batch_first(call.module, call.inputs, call.output)
    return (inputs.args, dict(inputs.kwargs)), output


def _shape_finding(call: LayerCall, batch: int) -> Finding | None:
    for what, value in zip(("input", "output"), batch_first(call)):
        tensors = [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]
        if not tensors:
            return Finding(f"is called with an {what} that holds no tensor", call.qualname, call.module)
        for tensor in tensors:
            if tensor.dim() == 0 or tensor.shape[0] != batch:
                rows = "no batch dimension" if tensor.dim() == 0 else f"{tensor.shape[0]} rows on dim 0"
                return Finding(
                    f"is called with an {what} of shape {tuple(tensor.shape)} ({rows}) in a batch of {batch}: its "
                    "rule needs the batch on dim 0, and a time-major layout (T, B, ...), a flattened (B·T, ...) "
                    "batch or an input shared by all samples (positions) breaks that",
                    call.qualname, call.module)
    return None


def _replacements(context: CheckContext, calls: list[LayerCall]) -> list[tuple[int, int]]:
    """(j, k): sample j replaced by sample k, a different one, for the samples worth replacing."""
    batch = context.full_size
    if batch < 2:
        return []
    wanted = [0, batch - 1, *context.rows]
    for call in calls:  # the samples holding each captured tensor's largest value
        for value in batch_first(call):
            for tensor in tree_leaves(value):
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                    wanted.append(int(tensor.detach().reshape(batch, -1).abs().amax(1).argmax()))
    tensors = [t for _, t in context.full_call.tensors()]
    pairs: list[tuple[int, int]] = []
    for j in dict.fromkeys(wanted):
        others = [(j + step) % batch for step in range(1, batch)]
        k = next((k for k in others if any(not torch.equal(t[j], t[k]) for t in tensors)), None)
        if k is not None:
            pairs.append((j, k))
        if len(pairs) == PERTURBED:
            break
    return pairs


def _replace_row(tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
    copy = tensor.clone()
    copy[j] = tensor[k]
    return copy


def _differs(x: torch.Tensor, y: torch.Tensor) -> float | None:
    if x.shape != y.shape:
        return float("inf")
    if not x.is_floating_point():
        return None if torch.equal(x, y) else float("inf")
    if not x.numel():
        return None
    scale = x.abs().max().item()
    change = (x - y).abs().max().item()
    return change / max(scale, 1e-30) if change > RELATIVE * max(scale, 1e-30) else None


def _other_rows_change(a, b, j: int) -> float | None:
    """The relative change of rows other than j between two captured values, or None if none."""
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape:
                return float("inf")
            keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            keep[j] = False
            found = _differs(x.detach()[keep], y.detach()[keep])
            if found is not None:
                return found
    return None


def _rows_not_moved(a, b) -> float | None:
    """How far the rows of `b` (from the rotated batch) are from the rows of `a`, rotated."""
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            found = _differs(x.detach().roll(1, 0), y.detach())
            if found is not None:
                return found
    return None
