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


def _losses(model, call: CallArgs, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    with restored_after(model):  # with gradients: a forward may differentiate inside (an energy model)
        return loss_fn(call.call(model), targets).detach().double()


def _with_row(tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
    copy = tensor.clone()
    copy[j] = tensor[k]
    return copy
