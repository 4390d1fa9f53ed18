"""The loss returns one loss per sample, and sample i's loss is what it would be alone.

A loss reduced over the batch (a scalar) mixes the samples; so does one that divides by the batch
size or by the number of valid tokens in the whole batch: its value for sample i changes with the
batch, and "the gradient sample i would produce alone" is then not the gradient of its term. Seen
on the example batch: the loss of a few samples computed alone must equal their losses in the batch.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import LossNotPerSample
from ..state import preserved
from .context import CheckContext

RELATIVE = 1e-4  # losses computed alone and in the batch differ only by rounding (float32 or wider)

SHAPE_FIX = (
    "A scalar means the loss is already reduced over the batch (reduction='mean' or 'sum'), which "
    "mixes the samples: its gradient is the batch gradient, not per-sample ones. Fix: use "
    "reduction='none', and reduce any other dimensions inside the loss, e.g. lambda out, y: "
    "F.mse_loss(out, y, reduction='none').flatten(1).mean(1)."
)
BATCH_FIX = (
    "A per-sample loss must not depend on the batch: not on its size (dividing by B or by "
    "outputs.shape[0]) nor on other samples (dividing by the number of valid tokens in the whole "
    "batch). Fix: normalise each sample by its own size, e.g. (token_losses * mask).sum(1) / "
    "mask.sum(1), and apply any batch-level scaling to the per-sample gradients afterwards."
)


def check_loss_shape(losses, batch: int) -> None:
    """Raise `LossNotPerSample` unless `losses` holds one loss per sample, shape (batch,)."""
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (batch,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise LossNotPerSample(
            f"loss_fn must return one loss per sample: for {batch} samples, shape ({batch},); got {shape}. {SHAPE_FIX}")


def check_loss_per_sample(context: CheckContext) -> None:
    """Raise `LossNotPerSample` unless the loss is per sample on the check batch."""
    observed = context.observation()
    batch = context.batch_size
    check_loss_shape(observed.losses, batch)
    context.ran("loss per sample")
    if batch < 2:
        return
    in_batch = observed.losses.detach().double()
    outputs = observed.outputs
    batch_first = all(t.dim() > 0 and t.shape[0] == batch for t in tree_leaves(outputs) if isinstance(t, torch.Tensor))
    if not batch_first and observed.draws_random_numbers:
        context.skipped("loss alone", "the model's outputs are not batch first and its forward draws random numbers")
        return
    for i in range(batch):
        with torch.no_grad(), preserved(context.check_model):
            if batch_first:
                sample_outputs = tree_map(lambda t: t[i : i + 1] if isinstance(t, torch.Tensor) else t, outputs)
            else:
                sample_outputs = context.check_call.select(i).call(context.check_model)
            alone = context.loss_fn(sample_outputs, context.check_targets[i : i + 1])
        check_loss_shape(alone, 1)
        value, expected = alone.double().item(), in_batch[i].item()
        if abs(value - expected) > RELATIVE * max(abs(value), abs(expected), 1e-12):
            raise LossNotPerSample(
                f"the loss of sample {i} is {expected:.6g} in a batch of {batch} but {value:.6g} alone "
                f"(ratio {expected / value if value else float('inf'):.4g}), so it depends on the batch. {BATCH_FIX}"
            )
