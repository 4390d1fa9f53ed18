"""The API contract's checks, shared by every method: trainable parameters, layers that couple
samples, dtypes on devices, inputs that match the model.

A per-sample gradient is the gradient sample i would produce alone (a batch of one), so no layer
may couple samples (BatchNorm with batch statistics) and the loss must return one loss per sample
(checked on the example batch by `persample.checks.loss`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .assumptions import SAMPLES_INDEPENDENT
from .batch import CallArgs, Inputs
from .errors import Unsupported
from .capabilities import Finding, Refusal

Batch = tuple[Inputs, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

default_loss: LossFn = partial(F.cross_entropy, reduction="none")
"""Softmax cross-entropy with `reduction="none"`: one loss per sample."""


def as_tuple(inputs: Inputs) -> tuple:
    """Positional inputs as a tuple (a Tensor becomes a 1-tuple; a list, a tuple)."""
    call = CallArgs.of(inputs)
    if call.kwargs:
        raise ValueError("this helper takes positional inputs; a mapping of keyword inputs has no tuple form")
    return call.args


def batch_size_of(inputs: Inputs) -> int:
    """The number of samples in `inputs` (dim 0 of every tensor, which must agree)."""
    return CallArgs.of(inputs).batch_size


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by name, as `named_parameters()` gives them (tied ones once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def first_trainable_parameter(model: nn.Module) -> nn.Parameter:
    """The model's first trainable parameter (its device and dtype are the model's); `ValueError`
    when it has none."""
    param = next((p for p in model.parameters() if p.requires_grad), None)
    if param is None:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return param


def trainable_owners(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that directly own at least one trainable parameter, with their qualified names."""
    for qualname, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            yield qualname, module


def _coupling_layer(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
            return Finding(
                "has scale_grad_by_freq=True, which scales each row's gradient by its frequency in the "
                "whole batch, so one sample's gradient depends on the others. Fix: construct it with "
                "scale_grad_by_freq=False", qualname, module)
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            return Finding(
                "has max_norm set, which renormalises the weight in place during every forward, so "
                "computing gradients would change the model. Fix: construct it with max_norm=None (clip "
                "the rows in the optimizer instead)", qualname, module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            mode = "in training mode" if module.training else "with track_running_stats=False (even in eval mode)"
            return Finding(
                f"{mode} normalises with batch statistics, so each sample's gradient depends on the other "
                "samples and per-sample gradients are undefined. Fix: replace it with GroupNorm or LayerNorm "
                "(opacus.validators.ModuleValidator.fix does this), or use running statistics: "
                "track_running_stats=True and module.eval()", qualname, module)
    return None


COUPLING = Refusal(
    SAMPLES_INDEPENDENT.id,
    "BatchNorm with batch statistics (training mode, or track_running_stats=False); "
    "Embedding(scale_grad_by_freq=True) or Embedding(max_norm=...)",
    _coupling_layer,
)
"""Refused by every method: these layers couple samples or rewrite their weights in forward."""


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """Raise `Unsupported` when this device lacks `dtype`, naming a dtype it has."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise Unsupported(f"{name} has no bfloat16 support; use float16 or float32")
    if device.type == "mps" and dtype == torch.float64:
        raise Unsupported("the MPS device has no float64; use float32")


def check_inputs_match(model: nn.Module, inputs: Inputs) -> None:
    """Input tensors on the parameters' device, floating ones in their dtype (no silent casts)."""
    param = next(model.parameters(), None)
    if param is None:
        return
    for name, tensor in CallArgs.of(inputs).tensors():
        if tensor.device != param.device:
            raise ValueError(
                f"input {name} is on {tensor.device} but the model is on {param.device}; "
                f"move one of them (inputs.to({str(param.device)!r}))"
            )
        if tensor.is_floating_point() and tensor.dtype != param.dtype:
            raise ValueError(
                f"input {name} is {tensor.dtype} but the model's parameters are {param.dtype}; "
                f"cast the inputs (inputs.to({param.dtype})) or the model (model.to(...))"
            )


def check_targets(targets: torch.Tensor, batch: int) -> None:
    """Targets are a tensor, batch first, with one row per sample."""
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a Tensor, batch first; got {type(targets).__name__}")
    if targets.shape[:1] != (batch,):
        raise ValueError(
            f"targets must be batch first with {batch} rows to match the inputs; got shape {tuple(targets.shape)}"
        )
