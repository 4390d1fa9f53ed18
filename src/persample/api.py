"""The public entry points: per-sample gradients and their norms, for any registered method."""
from __future__ import annotations

import torch
from torch import nn

from .contract import LossFn, Inputs, as_tuple, batch_size_of
from .methods.registry import Method, get
from .selection import choose_method


def resolve_method(method: str | Method, model: nn.Module, inputs: Inputs) -> Method:
    """A `Method` for a name, an instance, or "auto" (see `persample.selection`)."""
    if method == "auto":
        param = next((p for p in model.parameters() if p.requires_grad), None)
        if param is None:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        return choose_method(model, param.device, param.dtype, batch_size=batch_size_of(inputs))
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

    Returns `{name: (B, *param.shape)}` keyed as in `model.named_parameters()`. `loss_fn(outputs,
    targets)` must return one loss per sample (default: cross-entropy, reduction="none").
    """
    chosen = resolve_method(method, model, inputs)
    return chosen.prepare(model, loss_fn, (inputs, targets))(inputs, targets)


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
    squares = [g.flatten(1).to(torch.promote_types(g.dtype, torch.float32)).square().sum(1) for g in grads.values()]
    return torch.stack(squares).sum(0).sqrt()


__all__ = ["per_sample_grads", "per_sample_grad_norms", "resolve_method", "as_tuple"]
