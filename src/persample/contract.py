"""The API contract's checks, shared by every method: per-sample losses, refused layers, dtypes.

A per-sample gradient is the gradient sample i would produce alone (a batch of one), so the loss
must return one loss per sample and no layer may couple samples (BatchNorm in training mode).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LossNotPerSample, Unsupported

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
Batch = tuple[Inputs, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

default_loss: LossFn = partial(F.cross_entropy, reduction="none")
"""Softmax cross-entropy with `reduction="none"`: one loss per sample."""


def as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def batch_size_of(inputs: Inputs) -> int:
    first = as_tuple(inputs)[0]
    if first.dim() == 0:
        raise ValueError("inputs must be batch first; got a 0-dimensional tensor")
    return first.shape[0]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by name, as `named_parameters()` gives them (tied ones once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def trainable_owners(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that directly own at least one trainable parameter, with their qualified names."""
    for qualname, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            yield qualname, module


def refuse_unsound_layers(model: nn.Module, *, method: str | None = None) -> None:
    """Raise `Unsupported` for layers that couple samples or rewrite their weights in forward."""
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
            raise Unsupported(
                f"layer {qualname} (Embedding) has scale_grad_by_freq=True, which scales each "
                "row's gradient by its frequency in the whole batch, so one sample's gradient "
                "depends on the others. Fix: construct it with scale_grad_by_freq=False.",
                method=method,
                layer="Embedding",
            )
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            raise Unsupported(
                f"layer {qualname} (Embedding) has max_norm set, which renormalises the weight "
                "in place during every forward, so computing gradients would change the model. "
                "Fix: construct it with max_norm=None (clip the rows in the optimizer instead).",
                method=method,
                layer="Embedding",
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise Unsupported(
                f"layer {qualname} ({type(module).__name__}) in training mode normalises with "
                "batch statistics, so each sample's gradient depends on the other samples and "
                "per-sample gradients are undefined. Fix: replace it with GroupNorm or LayerNorm "
                "(opacus.validators.ModuleValidator.fix does this), or put it in eval mode "
                "(module.eval()) to use its running statistics.",
                method=method,
                layer=type(module).__name__,
            )


def check_per_sample_loss(
    model: nn.Module, loss_fn: LossFn, inputs: Inputs, targets: torch.Tensor
) -> None:
    """Run the model once without gradients and check the loss has shape `(B,)`."""
    batch = batch_size_of(inputs)
    if targets.shape[:1] != (batch,):
        raise ValueError(
            f"targets must be batch first with {batch} rows to match the inputs; "
            f"got shape {tuple(targets.shape)}"
        )
    with torch.no_grad():
        losses = loss_fn(model(*as_tuple(inputs)), targets)
    check_loss_shape(losses, batch)


def check_loss_shape(losses: torch.Tensor, batch: int) -> None:
    """Raise `LossNotPerSample` unless `losses` holds one loss per sample."""
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (batch,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise LossNotPerSample(
            f"loss_fn must return one loss per sample, shape ({batch},); got {shape}. "
            "A scalar means the loss is already reduced over the batch (reduction='mean' or "
            "'sum'), which mixes the samples: its gradient is the batch gradient, not per-sample "
            "ones. Fix: use reduction='none', and reduce any other dimensions inside the loss, "
            "e.g. lambda out, y: F.mse_loss(out, y, reduction='none').flatten(1).mean(1)."
        )


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """Raise `Unsupported` when this device lacks `dtype`, naming a dtype it has."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise Unsupported(f"{name} has no bfloat16 support; use float16 or float32")
    if device.type == "mps" and dtype == torch.float64:
        raise Unsupported("the MPS device has no float64; use float32")


def check_inputs_match(model: nn.Module, inputs: Inputs) -> None:
    """Floating inputs must share the parameters' dtype and device (no silent casts)."""
    param = next(model.parameters(), None)
    if param is None:
        return
    for index, tensor in enumerate(as_tuple(inputs)):
        if tensor.device != param.device:
            raise ValueError(
                f"input {index} is on {tensor.device} but the model is on {param.device}; "
                f"move one of them (inputs.to({str(param.device)!r}))"
            )
        if tensor.is_floating_point() and tensor.dtype != param.dtype:
            raise ValueError(
                f"input {index} is {tensor.dtype} but the model's parameters are {param.dtype}; "
                f"cast the inputs (inputs.to({param.dtype})) or the model (model.to(...))"
            )
