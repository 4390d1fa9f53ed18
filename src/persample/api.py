"""The public entry points: per-sample gradients and their norms, for any registered method."""
from __future__ import annotations

import torch
from torch import nn

from . import cache
from .batch import CallArgs, Inputs
from .contract import LossFn, as_tuple, default_loss, first_trainable_parameter
from .errors import StaleStep
from .methods.base import Method
from .methods.registry import get


def resolve_method(method: str | Method, model: nn.Module, inputs: Inputs) -> Method:
    """A `Method` for a name, an instance, or "auto" (see `persample.selection`), statically."""
    if method == "auto":
        from .selection import choose_method

        param = first_trainable_parameter(model)
        return choose_method(model, param.device, param.dtype, batch_size=CallArgs.of(inputs).batch_size)
    return get(method)


def per_sample_grads(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    method: str | Method = "auto",
) -> dict[str, torch.Tensor]:
    """The gradient each sample would produce alone, for every trainable parameter.

    `inputs`: a Tensor (`model(inputs)`), a tuple or list (`model(*inputs)`) or a mapping of keyword
    arguments (`model(**inputs)`, as Hugging Face-style batches come); every tensor in it batch
    first; values that are not tensors are passed unchanged. `targets`: a Tensor, batch first.
    `loss_fn(outputs, targets)` returns one loss per sample, shape (B,) (default: cross-entropy,
    reduction="none"); its value for a sample must not depend on the rest of the batch.

    Returns `{name: (B, *param.shape)}` keyed as in `model.named_parameters()`, each in its
    parameter's dtype and on its device, unscaled (what sample i alone would put into `.grad`).
    Raises `Unsupported` (the method cannot do this model: the layer, the reason and the methods
    that can), `LossNotPerSample` (a `ValueError`: the loss is reduced or depends on the batch) or
    `ValueError` (inputs that are not batch first, or not in one of the four forms).

    The prepared step (its checks, and `auto`'s choice) is kept per model, method, loss function,
    input shapes and dtypes (`persample.cache`): pass the same `loss_fn` object to reuse it. When a
    step's per-call guard sees the model take another path than when it was prepared, the step is
    prepared again on this batch (its checks then refuse, or `auto` chooses again).
    """
    loss_fn = loss_fn or default_loss
    chosen = get(method)
    call = CallArgs.of(inputs)
    key = cache.key_of(chosen.name if isinstance(method, str) else id(chosen), loss_fn, call, targets, model)
    prepare = lambda: chosen.prepare(model, loss_fn, (call, targets))  # noqa: E731
    step = cache.cached_step(model, key, loss_fn, prepare)
    try:
        return step(call, targets)
    except StaleStep:  # the model took another path on this batch: check it again, on this batch
        cache.forget(model, key)
        return cache.cached_step(model, key, loss_fn, prepare)(call, targets)


def per_sample_grad_norms(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    method: str | Method = "auto",
) -> torch.Tensor:
    """‖gᵢ‖₂ over all trainable parameters, shape (B,), accumulated in at least float32."""
    grads = per_sample_grads(model, inputs, targets, loss_fn=loss_fn, method=method)
    squares = [g.reshape(g.shape[0], g[0].numel() if len(g) else 0).to(torch.promote_types(g.dtype, torch.float32)).square().sum(1) for g in grads.values()]
    return torch.stack(squares).sum(0).sqrt()


__all__ = ["per_sample_grads", "per_sample_grad_norms", "resolve_method", "as_tuple"]
