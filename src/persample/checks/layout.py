"""Each layer with a rule sees the batch on dim 0, row i computed from sample i alone.

A layer's rule reads row i of its input and of its output gradient as sample i's. That fails
silently when a layer is called time-major ((T, B, ...), even with T == B), on a flattened batch,
on an input shared by every sample (positions), or after samples were mixed. Two looks settle it
on the check batch: every captured input and output has the batch size on dim 0; and when any
one sample j is replaced by another sample, no other row of any captured input or output changes
(each sample in turn: a coupling may run one way only, or through the sample holding a batch
extreme).
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ..assumptions import BATCH_FIRST
from ..capabilities import Finding, refusal
from ..observe import LayerCall, observe
from .context import CheckContext

RELATIVE = 1e-5  # rows of other samples are recomputed from the same values: equal up to rounding


def probe_batch_layout(context: CheckContext) -> None:
    """Raise the `batch-first-layers` refusal for the first captured call that breaks it."""
    observed = context.observation()
    capture = context.capture
    batch = context.batch_size
    calls = [c for c in observed.calls if c.grad_enabled]
    for call in calls:
        finding = _shape_finding(call, batch)
        if finding is not None:
            raise refusal(finding, BATCH_FIRST.id, context.method_name)
    context.ran("batch on dim 0")
    pairs = _differing_samples(context)
    if not pairs:
        context.skipped("sample independence", "the check batch has fewer than two different samples")
        return
    for j, k in pairs:  # every sample in turn: coupling may run one way only (sample i reads i - 1)
        perturbed = context.check_call.map(lambda t: _replace_row(t, j, k))
        again = observe(context.check_model, context.loss_fn, perturbed, _replace_row(context.check_targets, j, k),
                        capture=capture, watch=False)
        repeated = [c for c in again.calls if c.grad_enabled]
        if [c.module for c in repeated] != [c.module for c in calls]:
            raise refusal(Finding(
                f"the layers with rules were called in a different order or number when sample {j} changed: "
                "the model's control flow depends on the batch's values, so the rules cannot pair a layer's "
                "input with its output gradient"), BATCH_FIRST.id, context.method_name)
        for before, after in zip(calls, repeated):
            for what, a, b in (("input", before.input, after.input), ("output", before.output, after.output)):
                change = _other_rows_change(a, b, j)
                if change is not None:
                    raise refusal(Finding(
                        f"is called with an {what} whose rows of other samples changed (by {change:.2g}, relative) "
                        f"when only sample {j} changed: row i is not computed from sample i alone. Either the batch "
                        "is not on dim 0 (a time-major layer, e.g. with T == B) or samples were mixed before it (a "
                        "batch statistic, a shift along the batch, a branch on a batch-level value)",
                        before.qualname, before.module), BATCH_FIRST.id, context.method_name)
    context.ran("sample independence")


def _shape_finding(call: LayerCall, batch: int) -> Finding | None:
    for what, value in (("input", call.input), ("output", call.output)):
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


def _differing_samples(context: CheckContext) -> list[tuple[int, int]]:
    """(j, k) for every sample j of the check batch: k, the next sample whose inputs differ from j's."""
    batch = context.batch_size
    tensors = [t for _, t in context.check_call.tensors()]
    pairs = []
    for j in range(batch):
        others = [(j + step) % batch for step in range(1, batch)]
        k = next((k for k in others if any(not torch.equal(t[j], t[k]) for t in tensors)), None)
        if k is not None:
            pairs.append((j, k))
    return pairs


def _replace_row(tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
    copy = tensor.clone()
    copy[j] = tensor[k]
    return copy


def _other_rows_change(a, b, j: int) -> float | None:
    """The relative change of rows other than j between two captured values, or None if none."""
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            continue
        if x.shape != y.shape:
            return float("inf")
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[j] = False
        x, y = x.detach()[keep], y.detach()[keep]
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf")
            continue
        scale = x.abs().max().item() if x.numel() else 0.0
        change = (x - y).abs().max().item() if x.numel() else 0.0
        if change > RELATIVE * max(scale, 1e-30):
            return change / max(scale, 1e-30)
    return None
