"""A traced graph turned into a list of JAX operations that hold no tensors and no modules.

Each op names its implementation (a JAX function, or a layer's partial with its hyperparameters),
its arguments (earlier results as `Slot`s, weights as `Weight` keys) and where its result goes.
Weights stay arguments, so one compiled program serves any weights of the same shapes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from ..errors import LossNotPerSample, Unsupported


@dataclass(frozen=True)
class Slot:
    """The result of an earlier op (or an input), by position in the program's value list."""

    index: int


@dataclass(frozen=True)
class Weight:
    """A weight argument of the compiled function, by key (a parameter or buffer name)."""

    key: str


@dataclass(frozen=True)
class LayerWeights:
    """A layer's weights as `{local name: array}`, bound to keys: `(("weight", "fc.weight"),)`."""

    bindings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Op:
    """One operation of a `Program`: `impl(*args, **kwargs)` with `Slot` and `Weight` arguments, its result
    stored in slot `out`; `node` names the fx node it came from.
    """

    node: str
    impl: Callable
    args: tuple
    kwargs: tuple[tuple[str, Any], ...]
    out: int
    rebinds: int | None = None
    """An in-place op also replaces this slot, so later readers see the mutated value."""


@dataclass(frozen=True)
class Program:
    """A translated model and loss as JAX operations over `n_inputs` inputs; `run(weights, *inputs)` evaluates
    it and returns `output` with its slots filled.
    """

    n_inputs: int
    ops: tuple[Op, ...]
    output: Any

    def run(self, weights: Mapping[str, Any], *inputs: Any) -> Any:
        """Evaluate with JAX arrays: `weights` by key, `inputs` in placeholder order."""
        if len(inputs) != self.n_inputs:
            raise TypeError(f"the program takes {self.n_inputs} inputs, got {len(inputs)}")
        values: list[Any] = list(inputs) + [None] * len(self.ops)
        for op in self.ops:
            args = resolve(op.args, values, weights)
            kwargs = dict(resolve(op.kwargs, values, weights))
            try:
                values[op.out] = op.impl(*args, **kwargs)
            except (Unsupported, LossNotPerSample):
                raise
            except Exception as error:
                name = getattr(getattr(op.impl, "func", op.impl), "__qualname__", "?")
                raise Unsupported(
                    f"the JAX translation of graph node {op.node} (by {name}) failed: "
                    f"{type(error).__name__}: {error}", method="jax",
                ) from error
            if op.rebinds is not None:
                values[op.rebinds] = values[op.out]
        return resolve(self.output, values, weights)

    def key(self) -> str:
        """Text that is equal for two programs exactly when they compute the same function (computed
        once: a program is immutable, and a step asks on every call)."""
        cached = self.__dict__.get("_key")
        if cached is None:
            cached = self._describe()
            object.__setattr__(self, "_key", cached)
        return cached

    def _describe(self) -> str:
        lines = [f"inputs {self.n_inputs}"]
        for op in self.ops:
            lines.append(f"{op.out}={describe_impl(op.impl)}{op.args!r}{op.kwargs!r}~{op.rebinds}")
        lines.append(f"return {self.output!r}")
        return "\n".join(lines)


def resolve(template: Any, values: list[Any], weights: Mapping[str, Any]) -> Any:
    """`template` with every Slot, Weight and LayerWeights replaced by its value."""
    if isinstance(template, Slot):
        return values[template.index]
    if isinstance(template, Weight):
        return weights[template.key]
    if isinstance(template, LayerWeights):
        return {local: weights[key] for local, key in template.bindings}
    if isinstance(template, tuple):
        return tuple(resolve(t, values, weights) for t in template)
    if isinstance(template, list):
        return [resolve(t, values, weights) for t in template]
    if isinstance(template, dict):
        return {k: resolve(v, values, weights) for k, v in template.items()}
    if isinstance(template, slice):
        return slice(*(resolve(t, values, weights) for t in (template.start, template.stop, template.step)))
    return template


def template_of(arg: Any, refs: Mapping[fx.Node, Slot | Weight]) -> Any:
    """An fx argument with its nodes replaced by their Slot or Weight (containers keep types)."""
    if isinstance(arg, fx.Node):
        return refs[arg]
    if isinstance(arg, tuple) and type(arg) is not tuple:  # a named tuple such as torch.Size
        return tuple(template_of(a, refs) for a in arg)
    if isinstance(arg, (tuple, list)):
        return type(arg)(template_of(a, refs) for a in arg)
    if isinstance(arg, dict):
        return {k: template_of(v, refs) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(*(template_of(a, refs) for a in (arg.start, arg.stop, arg.step)))
    return arg


def describe_impl(impl: Callable) -> str:
    """The implementation's qualified name, with a partial's bound hyperparameters."""
    if isinstance(impl, functools.partial):
        keywords = sorted(impl.keywords.items())
        return f"{describe_impl(impl.func)}{impl.args!r}{keywords!r}"
    return f"{getattr(impl, '__module__', '')}.{getattr(impl, '__qualname__', repr(impl))}"
