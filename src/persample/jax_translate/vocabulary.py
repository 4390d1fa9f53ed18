"""What the JAX translation covers: the torch layer types, functions and tensor methods.

Declared here without importing JAX, so the method's capabilities can list the layers even where
JAX is missing; the translation modules register their implementations against these tables.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layers import nearest_registered

LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding,
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LSTM, nn.GRU, nn.RNN,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.LeakyReLU,
    nn.ELU, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Identity,
    nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss, nn.L1Loss, nn.BCEWithLogitsLoss,
)
"""Torch module types translated as a whole (subclasses match unless they override forward)."""

LayerImpl = Callable[..., Any]
"""`impl(weights, *args, **kwargs)`: a layer's forward, `weights` keyed by its local names."""

LAYERS: dict[type[nn.Module], Callable[[nn.Module], LayerImpl]] = {}
FUNCTIONS: dict[Callable, Callable] = {}
METHODS: dict[str, Callable] = {}
VIEWS: set[Callable] = set()
"""Implementations whose torch counterpart returns a view (in-place ops on them are refused)."""


def translates_layer(*types: type[nn.Module]):
    """Register `translator(module) -> impl` for torch module types declared in LAYER_TYPES."""
    def decorate(translator):
        for kind in types:
            if kind not in LAYER_TYPES:
                raise TypeError(f"{kind.__name__} is not declared in LAYER_TYPES; declare it first")
            LAYERS[kind] = translator
        return translator
    return decorate


def translates(*targets: Callable | str, view: bool = False):
    """Register a JAX implementation for torch functions (callables) and tensor methods (names)."""
    def decorate(impl):
        for target in targets:
            if isinstance(target, str):
                METHODS[target] = impl
            else:
                FUNCTIONS[target] = impl
        if view:
            VIEWS.add(impl)
        return impl
    return decorate


def layer_translator(module: nn.Module) -> Callable[[nn.Module], LayerImpl] | None:
    """The translator of the nearest registered base class, unless `module` overrides forward
    (`persample.layers.nearest_registered`, the lookup the layer rules use too)."""
    return nearest_registered(module, LAYERS)


def describe_function(target: Callable | str) -> str:
    """A readable name for a torch function or tensor method, as users write it."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module in ("torch.nn.functional", "torch._C._nn") or target is getattr(nn.functional, name, None):
        return f"torch.nn.functional.{name}"
    if module.startswith("torch") or target is getattr(torch, name, None):
        return f"torch.{name}"
    return f"{module}.{name}".lstrip(".")
