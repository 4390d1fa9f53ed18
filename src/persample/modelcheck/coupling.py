"""Whether the model couples the samples of a batch: sample i's loss changes when another sample does.

A per-sample gradient is what sample i produces alone (the loop's answer), so for a model that mixes
the samples of a batch (`x + 0.5 * x.mean(0)`, a softmax over dim 0, attention across the batch from
`nn.MultiheadAttention(batch_first=False)` fed a batch-first tensor) Σᵢ gᵢ is not the batch
gradient: the check then says so and does not hold methods to that invariant. Seen on the user's
batch: the first and the last sample replaced by another, each forward from the same random state
and the same buffers.
"""
from __future__ import annotations

import torch

from ..batch import CallArgs
from ..contract import LossFn
from ..state import restored_after

RELATIVE = 1e-4  # other samples' losses are recomputed from the same values: equal up to rounding


def coupling(model: torch.nn.Module, call: CallArgs, targets: torch.Tensor, loss_fn: LossFn) -> str | None:
    """A sentence naming the samples whose loss moved, or None when no sample's loss depends on another's."""
    batch = call.batch_size
    if batch < 2:
        return None
    tensors = [t for _, t in call.tensors()]
    before = _losses(model, call, targets, loss_fn)
    for j in dict.fromkeys((0, batch - 1)):
        k = next((k for k in ((j + s) % batch for s in range(1, batch)) if any(not torch.equal(t[j], t[k]) for t in tensors)), None)
        if k is None:
            continue
        after = _losses(model, call.map(lambda t: _with_row(t, j, k)), _with_row(targets, j, k), loss_fn)
        keep = torch.arange(batch, device=after.device) != j
        change = (after[keep] - before[keep]).abs()
        scale = before[keep].abs().clamp_min(1e-12)
        worst = int((change / scale).argmax())
        if change[worst] > RELATIVE * scale[worst]:
            i = int(keep.nonzero()[worst])
            return (f"replacing sample {j} changed the loss of sample {i} from {before[i].item():.6g} to "
                    f"{after[i].item():.6g}: the model couples the samples of a batch (a statistic over the batch, a softmax "
                    "or normalisation over dim 0, attention across the batch), so each sample's gradient alone, which "
                    "every method computes, does not add up to the batch gradient")
    return None


def reference_coupling(variant, reference: dict[str, torch.Tensor], tolerance: float) -> str | None:
    """A sentence saying that the reference's Σᵢ gᵢ (each sample alone) is not the batch gradient of
    the summed loss, or None when it is, within `tolerance` (relative, per parameter, floored at
    `VANISHING_FRACTION` of the largest). Both in the reference's dtype: on a float64 copy of the model
    and batch when `reference` is float64. A model can couple the samples (or depend on the batch's
    size) in ways no sample's loss value shows: a gradient routed between rows (`h + (s - s.detach())`
    with `s` a sum over the batch), a forward scaled by `x.shape[0]`; this is where it shows, from the
    reference itself, so that the check never holds a right method, the reference included, to an
    invariant the model does not satisfy. Raises nothing: a batch gradient that cannot be taken
    leaves the question open (None)."""
    from ..contract import trainable_parameters
    from ..gradients import gradients
    from ..reference import compare
    from ..state import copy_model, preserved

    if variant.call.batch_size < 2 or not reference:
        return None
    dtype = next(iter(reference.values())).dtype
    model = variant.model
    try:
        if dtype == torch.float64 and next(iter(trainable_parameters(model).values())).dtype != torch.float64:
            model = copy_model(model).to(torch.float64)
            for (_, copy), (_, param) in zip(model.named_parameters(), variant.model.named_parameters()):
                for hook in (getattr(param, "_backward_hooks", None) or {}).values():
                    copy.register_hook(hook)  # as the reference does: the gradient includes them
        call = variant.call.map(lambda t: t.to(dtype) if t.is_floating_point() else t)
        targets = variant.targets.to(dtype) if variant.targets.is_floating_point() else variant.targets
        params = {n: p for n, p in trainable_parameters(model).items() if n in reference}
        with preserved(model), torch.enable_grad():
            batch = gradients(variant.loss_fn(call.call(model), targets).sum(), list(params.values()))
    except Exception:  # noqa: BLE001 (the reference ran; its batch gradient is the check's own side)
        return None
    summed = {n: reference[n].sum(0, keepdim=True) for n in params}
    comparison = compare(summed, {n: g.unsqueeze(0).to(summed[n].dtype) for n, g in zip(params, batch)})
    if comparison.problems or comparison.max_relative <= tolerance:
        return None
    worst = max(comparison.relative, key=comparison.relative.get)
    return (f"Σᵢ gᵢ of the reference (each sample alone) differs from the batch gradient of the summed loss "
            f"(relative {comparison.max_relative:.3g}, in parameter {worst!r}): the model couples the samples of a "
            "batch or depends on the batch's size (x.shape[0], a statistic over the batch, a gradient routed "
            "between rows), even where no sample's loss value shows it, so each sample's gradient alone, which "
            "every method must compute, does not add up to the batch gradient")


def _losses(model, call: CallArgs, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    with restored_after(model):  # with gradients: a forward may differentiate inside (an energy model)
        return loss_fn(call.call(model), targets).detach().double()


def _with_row(tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
    copy = tensor.clone()
    copy[j] = tensor[k]
    return copy
