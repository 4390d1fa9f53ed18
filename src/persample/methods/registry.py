"""The registry of methods by name: built-ins, entry-point plugins and `module:object` specs.

The Method protocol lives in `persample.methods.base`, capabilities in `persample.capabilities`.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import torch
from torch import nn

from ..specs import load_spec
from ..capabilities import FLOATING, Capabilities, Finding, Refusal
from .base import Method, PreparedStep, _can_run

Step = PreparedStep
ENTRY_POINT_GROUP = "persample.methods"


_REGISTRY: dict[str, Method] = {}
_PLUGINS_LOADED = False


def register(method: Method | type[Method]) -> Method | type[Method]:
    """Register a method (instance or zero-argument class); usable as a class decorator."""
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, Method):
        raise TypeError(f"{method!r} is not a persample Method (subclass persample.Method)")
    known = _REGISTRY.get(instance.name)
    if known is not None and type(known).__qualname__ != type(instance).__qualname__:
        raise ValueError(f"a method named {instance.name!r} is already registered ({type(known).__module__}."
                         f"{type(known).__qualname__}); give {type(instance).__qualname__} another capabilities.name")
    _REGISTRY[instance.name] = instance
    return method


def load_object(spec: str) -> Method:
    """Load and register a method given as 'module:object' or 'path/to/file.py:object' (a Method
    instance, class or factory)."""
    obj = load_spec(spec, "method")
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Method)):
        obj = obj()
    register(obj)
    return obj


def load_plugins() -> None:
    """Register methods advertised by installed packages under the `persample.methods` group."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        load_object(entry.value)


def registered() -> Mapping[str, Method]:
    """All registered methods by name: built-ins first, then plugins."""
    from . import builtin  # noqa: F401  (registers the built-in methods)

    load_plugins()
    return dict(_REGISTRY)


def get(method: str | Method) -> Method:
    """The method registered under `method`, or `method` itself if it already is one."""
    if isinstance(method, Method):
        return method
    methods = registered()
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(methods)}")
    return methods[method]


def methods_supporting(model: nn.Module, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Names of registered methods whose declared refusals leave `model` on `device` in `dtype`."""
    return [name for name, method in registered().items() if _can_run(method, model, device, dtype)]


__all__ = ["FLOATING", "Capabilities", "Finding", "Method", "PreparedStep", "Refusal", "Step", "available_methods",
           "get", "load_object", "methods_supporting", "register", "registered"]


def available_methods() -> dict[str, str | None]:
    """name -> None if the method can run on this machine, else why not."""
    return {name: method.unavailable_reason() for name, method in registered().items()}
