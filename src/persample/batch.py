"""What a batch's inputs may be, and the one way every method calls the model on them.

`inputs` is a Tensor, a tuple or list (positional arguments: `model(*inputs)`), or a mapping
(keyword arguments: `model(**inputs)`, as Hugging Face-style pipelines give batches). Every tensor
value is batch first; values that are not tensors (flags such as `return_dict=False`, `None`)
are passed to every call unchanged. Anything else is a `ValueError` naming the fix.

    >>> import torch
    >>> call = CallArgs.of({"x": torch.zeros(4, 3), "t": torch.ones(4)})
    >>> call.batch_size, call.select(slice(0, 2)).kwargs["x"].shape
    (4, torch.Size([2, 3]))
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

Inputs = Union[torch.Tensor, tuple, list, Mapping[str, Any]]

FIX = (
    "pass a Tensor, a tuple or list of positional inputs (model(*inputs)), or a dict of keyword "
    "inputs (model(**inputs)), each tensor batch first"
)


@dataclass(frozen=True)
class CallArgs:
    """Positional and keyword arguments of one model call; tensors are batch first."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    single: bool = False  # the user gave one Tensor (kept so that a slice is one Tensor too)

    @classmethod
    def of(cls, inputs: Inputs | CallArgs) -> CallArgs:
        """Normalise `inputs`; raises `ValueError` for anything that is not one of the four forms."""
        if isinstance(inputs, CallArgs):
            return inputs
        if isinstance(inputs, torch.Tensor):
            return cls((inputs,), {}, single=True)
        if isinstance(inputs, (tuple, list)):
            return cls(tuple(inputs), {})
        if isinstance(inputs, Mapping):
            if not all(isinstance(key, str) for key in inputs):
                raise ValueError(f"a mapping of inputs must have str keys (argument names); got {list(inputs)!r}. {FIX}")
            return cls((), dict(inputs))
        raise ValueError(f"inputs of type {type(inputs).__name__} are not understood; {FIX}")

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(argument name, tensor) for every tensor argument: "0", "1", ... for positional ones."""
        named = [(str(i), a) for i, a in enumerate(self.args)] + list(self.kwargs.items())
        return [(name, value) for name, value in named if isinstance(value, torch.Tensor)]

    @property
    def batch_size(self) -> int:
        """The number of samples: dim 0 of the tensor arguments, which must agree."""
        tensors = self.tensors()
        if not tensors:
            raise ValueError(f"the inputs hold no tensor, so they carry no batch; {FIX}")
        sizes = {}
        for name, tensor in tensors:
            if tensor.dim() == 0:
                raise ValueError(f"input {name} is a 0-dimensional tensor; inputs must be batch first. {FIX}")
            sizes.setdefault(tensor.shape[0], name)
        if len(sizes) > 1:
            found = ", ".join(f"input {name}: {size}" for size, name in sizes.items())
            raise ValueError(f"the inputs disagree on the batch size (dim 0: {found}); every tensor input must be batch first")
        return next(iter(sizes))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CallArgs:
        """The same call with `fn` applied to every tensor argument."""
        apply = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return CallArgs(tuple(apply(a) for a in self.args), {k: apply(v) for k, v in self.kwargs.items()}, self.single)

    def select(self, index) -> CallArgs:
        """The samples `index` (an int keeps the batch dim: a batch of one; a slice or index tensor)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.map(lambda t: t[index])

    def call(self, model: Callable[..., Any]) -> Any:
        """`model(*args, **kwargs)` with these arguments; returns what the model returns."""
        return model(*self.args, **self.kwargs)

    def to_user(self) -> Inputs:
        """Back to the form the user gave (a Tensor, a tuple, or a dict)."""
        if self.single:
            return self.args[0]
        return dict(self.kwargs) if self.kwargs else self.args

    def signature(self) -> tuple:
        """Shapes, dtypes and devices of the tensors, and the non-tensor values: a cache key."""
        def describe(value):
            if isinstance(value, torch.Tensor):
                return ("tensor", tuple(value.shape), value.dtype, str(value.device), value.layout)
            try:
                hash(value)
                return ("value", value)
            except TypeError:
                return ("object", type(value).__name__, id(value))

        return (tuple(describe(a) for a in self.args), tuple((k, describe(v)) for k, v in sorted(self.kwargs.items())))


def call_model(model: nn.Module, inputs: Inputs | CallArgs) -> Any:
    """`model(*inputs)` or `model(**inputs)`, as `CallArgs.of` reads them."""
    return CallArgs.of(inputs).call(model)
