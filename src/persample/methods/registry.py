"""The Method protocol, its declared capabilities, and the registry of methods by name.

A method *prepares* once (checks, compilation, hooks) and returns a `Step`; only the step is
timed by the benchmarks. Capabilities are data: the conformance grid, the benchmark skips and the
report's capability table are all generated from them.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..contract import (
    Batch,
    LossFn,
    check_dtype_on_device,
    check_inputs_match,
    check_per_sample_loss,
    default_loss,
    refuse_unsound_layers,
    trainable_owners,
)
from ..errors import Unsupported

Step = Callable[..., dict[str, torch.Tensor]]
"""`step(inputs, targets) -> {param name: (B, *param.shape) tensor}`."""

ENTRY_POINT_GROUP = "persample.methods"
FLOATING = frozenset({torch.float64, torch.float32, torch.bfloat16, torch.float16})


@dataclass(frozen=True)
class Capabilities:
    """What a method declares it can do; everything that enumerates methods reads this."""

    name: str
    summary: str
    framework: str = "torch"
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[torch.dtype] = FLOATING
    # Module types whose own parameters the method can differentiate per sample (subclasses
    # match). None: any module autograd can differentiate.
    layers: tuple[type[nn.Module], ...] | None = None
    # (import name, pip name) of every package the method needs beyond torch.
    requires: tuple[tuple[str, str], ...] = ()
    peer: bool = False
    reference: bool = False
    notes: str = ""
    layer_names: tuple[str, ...] = field(default=(), compare=False)

    def layer_vocabulary(self) -> str:
        """Human-readable list of supported layer types, for errors and the report."""
        if self.layers is None:
            return "any differentiable module"
        return ", ".join(sorted({t.__name__ for t in self.layers} | set(self.layer_names)))


class Method(ABC):
    """A way of computing per-sample gradients. Subclasses set `capabilities` and `_prepare`."""

    capabilities: Capabilities

    @property
    def name(self) -> str:
        return self.capabilities.name

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run on this machine at all (a missing package), or None."""
        for module, package in self.capabilities.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the package {package!r}: pip install {package}"
        return None

    def find_unsupported(self, model: nn.Module) -> Unsupported | None:
        """The reason this method cannot handle `model` (not raised), or None if it can.

        Default: every module owning a trainable parameter must be in `capabilities.layers`.
        """
        layers = self.capabilities.layers
        if layers is None:
            return None
        for qualname, module in trainable_owners(model):
            if not isinstance(module, layers):
                kind = type(module).__name__
                return Unsupported(
                    f"layer {qualname or '<root>'} ({kind}) has trainable parameters and is "
                    f"outside this method's vocabulary ({self.capabilities.layer_vocabulary()})",
                    method=self.name,
                    layer=kind,
                )
        return None

    def problem(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> Unsupported | None:
        """Why this method cannot run `model` on `device` in `dtype` (not raised), or None."""
        name = self.name
        try:  # first: a model that couples samples is refused by every method, whatever else
            refuse_unsound_layers(model, method=name)
        except Unsupported as refused:
            return refused
        reason = self.unavailable_reason()
        if reason:
            return Unsupported(reason, method=name)
        if device.type not in self.capabilities.devices:
            return Unsupported(f"does not run on {device.type}", method=name)
        if dtype not in self.capabilities.dtypes:
            return Unsupported(self.unsupported_dtype(dtype), method=name)
        try:
            check_dtype_on_device(dtype, device)
        except Unsupported as refused:
            return refused
        return self.find_unsupported(model)

    def unsupported_dtype(self, dtype: torch.dtype) -> str:
        """Why this method does not offer `dtype` (override to say more)."""
        return f"does not offer {str(dtype).removeprefix('torch.')}"

    def check(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        """Raise `Unsupported` (naming the methods that can) unless this method can run `model`."""
        problem = self.problem(model, device, dtype)
        if problem is not None:
            raise Unsupported(
                problem.reason,
                method=self.name,
                layer=problem.layer,
                supported_by=[m for m in methods_supporting(model, device, dtype) if m != self.name],
            )

    def prepare(self, model: nn.Module, loss_fn: LossFn | None, example_batch: Batch) -> Step:
        """Check the model and the loss once, then build the step that computes gradients."""
        loss_fn = loss_fn or default_loss
        param = next((p for p in model.parameters() if p.requires_grad), None)
        if param is None:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        self.check(model, param.device, param.dtype)
        check_inputs_match(model, example_batch[0])
        check_per_sample_loss(model, loss_fn, *example_batch)
        return self._prepare(model, loss_fn, example_batch)

    @abstractmethod
    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        """Build the step; the model and loss have passed every generic check."""

    def __call__(self, model, inputs, targets, loss_fn=None) -> dict[str, torch.Tensor]:
        return self.prepare(model, loss_fn, (inputs, targets))(inputs, targets)

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_REGISTRY: dict[str, Method] = {}
_PLUGINS_LOADED = False


def register(method: Method | type[Method]) -> Method | type[Method]:
    """Register a method (instance or zero-argument class); usable as a class decorator."""
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, Method):
        raise TypeError(f"{method!r} is not a persample Method (subclass persample.Method)")
    _REGISTRY[instance.name] = instance
    return method


def load_object(spec: str) -> Method:
    """Load and register a method given as 'module:object' or 'path/to/file.py:object' (a Method
    instance, class or factory)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"method spec {spec!r} must look like 'package.module:object' or 'path/to/file.py:object'")
    obj = _import_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Method)):
        obj = obj()
    register(obj)
    return obj


def _import_file(path: str) -> object:
    """Import a method's module from a file (no package needed, nothing added to sys.path)."""
    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"method file {path!r} not found (relative paths start at {os.getcwd()})")
    name = "persample_plugin_" + os.path.splitext(os.path.basename(file))[0]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
    """Names of registered methods that can run `model` on `device` in `dtype` here."""
    return [name for name, method in registered().items() if _can_run(method, model, device, dtype)]


def _can_run(method: Method, model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    try:
        return method.problem(model, device, dtype) is None
    except Exception:  # a method whose own check breaks cannot be recommended
        return False


def available_methods() -> dict[str, str | None]:
    """name -> None if the method can run on this machine, else why not."""
    return {name: method.unavailable_reason() for name, method in registered().items()}
