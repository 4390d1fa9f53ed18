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
LOSS_ROWS = 64  # samples whose loss is computed alone, at most (besides the check rows and the extremes)

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
    """Raise `LossNotPerSample` unless the loss is per sample on the example batch: its shape, then
    the loss of each check row, of the samples with the smallest and the largest loss, and of the
    first `LOSS_ROWS` samples, computed alone (the model's outputs for that sample, the loss function
    on them), against its loss in the batch."""
    observed = context.observation()
    batch = context.full_size
    check_loss_shape(observed.losses, batch)
    context.ran("loss per sample")
    if batch < 2:
        return
    in_batch = observed.losses.detach().double()
    dims = output_batch_dims(context)
    if dims is None:
        context.skipped("loss alone", "the model's outputs have no dimension of the batch's size per sample")
        return
    # The loss alone costs one call of the loss function on one sample's outputs (not a forward), so
    # many rows are checked: the check rows, the samples with the smallest and largest losses in the
    # batch (what a loss keeping the hardest samples, or clipping the largest, treats otherwise), and
    # the first LOSS_ROWS.
    rows = dict.fromkeys([*context.rows, int(in_batch.argmin()), int(in_batch.argmax()), *range(min(batch, LOSS_ROWS))])
    for i in rows:
        with torch.no_grad():
            alone = context.loss_fn(_sample(observed.outputs, dims, i), context.full_targets[i : i + 1])
        check_loss_shape(alone, 1)
        value, expected = alone.double().item(), in_batch[i].item()
        if abs(value - expected) > RELATIVE * max(abs(value), abs(expected), 1e-12):
            raise LossNotPerSample(
                f"the loss of sample {i} is {expected:.6g} in a batch of {batch} but {value:.6g} alone "
                f"(ratio {expected / value if value else float('inf'):.4g}), so it depends on the batch. {BATCH_FIX}"
            )


def output_batch_dims(context: CheckContext) -> list[int | None] | None:
    """For each tensor in the model's outputs, the dimension that indexes the samples (None for a
    tensor shared by all samples); None when no tensor has one. A tensor with several dimensions of
    the batch's size is told apart by replacing one sample: only its index changes along its batch
    dimension (an output (T, B) with T == B, time-major, would be sliced wrongly otherwise)."""
    observed, batch = context.observation(), context.full_size
    leaves = [t for t in tree_leaves(observed.outputs) if isinstance(t, torch.Tensor)]
    candidates = [[d for d, size in enumerate(t.shape) if size == batch] for t in leaves]
    if any(len(c) > 1 for c in candidates):
        candidates = _by_replacing_a_sample(context, leaves, candidates)
    dims = [c[0] if c else None for c in candidates]
    return dims if any(d is not None for d in dims) else None


def _by_replacing_a_sample(context: CheckContext, leaves, candidates) -> list[list[int]]:
    batch = context.full_size
    j, k = 0, 1
    replaced = context.full_call.map(lambda t: _with_row(t, j, k))
    with torch.no_grad(), preserved(context.model):
        again = [t for t in tree_leaves(replaced.call(context.model)) if isinstance(t, torch.Tensor)]
    chosen = []
    for before, after, dims in zip(leaves, again, candidates):
        changed = (before.detach() != after.detach())
        fits = [d for d in dims if changed.any() and changed.movedim(d, 0).reshape(batch, -1)[torch.arange(batch) != j].sum() == 0]
        chosen.append(fits[:1] if fits else dims[:1])
    return chosen


def _with_row(tensor: torch.Tensor, j: int, k: int) -> torch.Tensor:
    copy = tensor.clone()
    copy[j] = tensor[k]
    return copy


def _sample(outputs, dims: list[int | None], i: int):
    """The outputs of sample i, as a batch of one (shared tensors as they are)."""
    supply = iter(dims)

    def take(value):
        if not isinstance(value, torch.Tensor):
            return value
        dim = next(supply)
        return value if dim is None else value.narrow(dim, i, 1)

    return tree_map(take, outputs)
