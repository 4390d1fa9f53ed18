"""The registry of methods by name: the built-ins (a static table, imported on first lookup),
entry-point plugins and `module:object` specs.

The Method protocol lives in `persample.methods.base`, capabilities in `persample.capabilities`. No
method module imports this one: the table below names each built-in as a "module:object" string,
so the import graph has no cycle and a lookup imports only what it needs.
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

# The built-in methods: name -> "module:object" (a Method instance, class or factory). Order here is
# display order (`persample methods`, the report, the grid, auto's last-resort order); to add a
# method, add its line.
BUILTIN_METHODS: dict[str, str] = {
    "loop": "persample.methods.loop:LoopMethod",
    "hooks": "persample.methods.hooks:HooksMethod",
    "expand": "persample.methods.expand:ExpandMethod",
    "vmap": "persample.methods.vmap:VmapMethod",
    "kernel": "persample.methods.kernel:KernelMethod",
    "jax": "persample.methods.jax:JaxMethod",
    # the peers
    "torch-ew": "persample.methods.torch_ew:TorchExpandedWeightsMethod",
    "opacus-hooks": "persample.methods.opacus:OPACUS_HOOKS",
    "opacus-functorch": "persample.methods.opacus:OPACUS_FUNCTORCH",
    "opacus-ew": "persample.methods.opacus:OPACUS_EW",
    "backpack": "persample.methods.backpack:BackpackMethod",
    # chooses among the others
    "auto": "persample.methods.auto:AutoMethod",
}

_REGISTRY: dict[str, Method] = {}
_PLUGINS_LOADED = False


def _instance(obj: object, spec: str) -> Method:
    """`obj` as a Method: an instance as is, a class or factory called with no arguments.

    Raises `TypeError` when the result is not a `Method`.
    """
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Method)):
        obj = obj()
    if not isinstance(obj, Method):
        raise TypeError(f"{spec} gives {obj!r}, not a persample Method (subclass persample.Method)")
    return obj


def _load_builtin(name: str) -> Method:
    """The built-in method `name` (a key of `BUILTIN_METHODS`), imported and registered on first use.

    Raises `RuntimeError` when the object the table names calls itself by another name.
    """
    method = _REGISTRY.get(name)
    if method is None:
        spec = BUILTIN_METHODS[name]
        method = _instance(load_spec(spec, "method"), spec)
        if method.name != name:
            raise RuntimeError(f"BUILTIN_METHODS[{name!r}] = {spec!r} names a method called {method.name!r}")
        _REGISTRY[name] = method
    return method


def register(method: Method | type[Method]) -> Method | type[Method]:
    """Register a method (instance or zero-argument class); usable as a class decorator.

    Returns `method` unchanged. Raises `TypeError` when it is not a `Method`, `ValueError` when
    another class already holds its name.
    """
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, Method):
        raise TypeError(f"{method!r} is not a persample Method (subclass persample.Method)")
    known = _load_builtin(instance.name) if instance.name in BUILTIN_METHODS else _REGISTRY.get(instance.name)
    if known is not None and type(known).__qualname__ != type(instance).__qualname__:
        raise ValueError(f"a method named {instance.name!r} is already registered ({type(known).__module__}."
                         f"{type(known).__qualname__}); give {type(instance).__qualname__} another capabilities.name")
    _REGISTRY[instance.name] = instance
    return method


def load_object(spec: str) -> Method:
    """Load and register a method given as 'module:object' or 'path/to/file.py:object' (a Method
    instance, class or factory).

    Returns the registered instance. Raises what `specs.load_spec` raises, `TypeError` when the
    object is not a Method, `ValueError` when its name is taken.
    """
    obj = _instance(load_spec(spec, "method"), spec)
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
    """All registered methods by name: the built-ins in `BUILTIN_METHODS` order, then plugins and
    specs in the order they registered (a new dict; importing every built-in module on first call)."""
    builtins = {name: _load_builtin(name) for name in BUILTIN_METHODS}
    load_plugins()
    return {**builtins, **{name: method for name, method in _REGISTRY.items() if name not in builtins}}


def get(method: str | Method) -> Method:
    """The method registered under `method`, or `method` itself if it already is one.

    A built-in name imports that method's module only. Raises `ValueError` for an unknown name
    (the message lists the registered ones).
    """
    if isinstance(method, Method):
        return method
    if method in BUILTIN_METHODS:
        return _load_builtin(method)
    if method in _REGISTRY:
        return _REGISTRY[method]
    methods = registered()
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(methods)}")
    return methods[method]


def methods_supporting(model: nn.Module, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Names of registered methods (display order) whose declared refusals leave `model` on `device`
    in `dtype`."""
    return [name for name, method in registered().items() if _can_run(method, model, device, dtype)]


__all__ = ["BUILTIN_METHODS", "FLOATING", "Capabilities", "Finding", "Method", "PreparedStep", "Refusal", "Step",
           "available_methods",
           "get", "load_object", "methods_supporting", "register", "registered"]


def available_methods() -> dict[str, str | None]:
    """name -> None if the method can run on this machine, else why not."""
    return {name: method.unavailable_reason() for name, method in registered().items()}
