"""Facts about torch layers that several parts of persample need, each written once.

- `nearest_registered`: which entry of a table keyed by layer type applies to a module (the
  layer rules, their FLOP counts and the JAX translation all ask it the same way); a table may also
  key an entry by a class's qualified name ("transformers.pytorch_utils.Conv1D"), so a layer of an
  optional package is registered without importing it (`named_layer` stands for such a class);
- `padding_amounts`: the zeros (or reflected, replicated, wrapped values) a convolution adds
  before and after each spatial dim (the conv rule, the conv kernel, the JAX translation);
- `uses_running_stats`: whether an InstanceNorm or a BatchNorm normalises with its running statistics
  or with the input's own (the norm rules, the norm kernel, the JAX translation);
- `LayerInput`: what one call of a layer received (positional and keyword arguments), as the
  captures record it and the rules read it.

Nothing here imports more than torch.
"""
from __future__ import annotations

import copyreg
import functools
import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

Entry = TypeVar("Entry")


def first_input(args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """A layer's input: its first positional argument, or its first keyword one (`lin(input=x)`);
    None for a call without arguments."""
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


@dataclass(frozen=True)
class LayerInput:
    """The arguments of one call of a layer, as its forward received them.

    Single-input layers (Linear, Conv, Embedding, the norms) read `first`; a layer called with
    several tensors and options (nn.MultiheadAttention's query, key, value, key_padding_mask)
    reads them by name through `bound(module)`.
    """

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, *args: Any, **kwargs: Any) -> LayerInput:
        """The call `module(*args, **kwargs)`: `LayerInput.of(x)` for a one-tensor layer."""
        return cls(args, kwargs)

    @property
    def first(self) -> Any:
        """The first positional argument, else the first keyword one (see `first_input`)."""
        return first_input(self.args, self.kwargs)

    def bound(self, module: nn.Module) -> dict[str, Any]:
        """Every argument of the module's class's `forward` by parameter name, defaults filled in (the
        class's, not an instance attribute's: expand routes `module.forward` through the rule while
        the rule reads the call). Raises TypeError when the arguments do not fit the signature."""
        bound = inspect.signature(type(module).forward).bind(module, *self.args, **self.kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        return arguments


def qualified_name(cls: type) -> str:
    """`f"{cls.__module__}.{cls.__qualname__}"`: how a table names a class it does not import
    ("transformers.pytorch_utils.Conv1D")."""
    return f"{cls.__module__}.{cls.__qualname__}"


def nearest_registered_base(
    module: nn.Module | type[nn.Module], table: Mapping[type | str, Entry]
) -> tuple[type, type | str] | None:
    """(the class in `module`'s MRO that matched, the key of `table` it matched) for the nearest
    registered base (see `nearest_registered`), or None."""
    kind = module if isinstance(module, type) else type(module)
    for base in kind.__mro__:
        key = base if base in table else qualified_name(base)
        if key in table:
            return (base, key) if kind.forward is base.forward else None
    return None


def nearest_registered(module: nn.Module | type[nn.Module], table: Mapping[type | str, Entry]) -> Entry | None:
    """The entry of `table` for `module`'s type or its nearest base class in the table, or None.

    A table's key is a class, or a class's qualified name (`qualified_name`: "module.QualName"), for
    a layer of an optional package that persample does not import (Hugging Face's Conv1D): along
    `module`'s MRO each class matches its own key or its qualified name, so the package is never
    imported to look a module up (a module of that class exists, so its package is loaded already).
    A subclass matches its registered base unless it (or a class between them) overrides
    `forward`: it then computes something else, and the base's entry (a gradient formula, a FLOP
    count, a translation) would describe the wrong function. None when no base class is in
    `table` or the nearest one's `forward` is not the module's.
    """
    found = nearest_registered_base(module, table)
    return None if found is None else table[found[1]]


class NamedLayer(type):
    """The metaclass of `named_layer`'s stand-ins: a class known by its qualified name only.

    `isinstance(obj, stand_in)` and `issubclass(cls, stand_in)` hold for every class whose MRO has a
    class of that qualified name (so a tuple of layer types, such as a method's vocabulary, can hold
    it beside real classes); `stand_in.qualified` is the name, `stand_in.resolve()` the class itself
    when its package imports (imported then), else None.
    """

    qualified: str

    def __instancecheck__(cls, obj: object) -> bool:
        return cls.__subclasscheck__(type(obj))

    def __subclasscheck__(cls, sub: type) -> bool:
        return any(qualified_name(base) == cls.qualified for base in getattr(sub, "__mro__", ()))

    def resolve(cls) -> type | None:
        """The class named `qualified`, importing its module; None when that module cannot be
        imported (the optional package is missing) or does not define it."""
        module, _, name = cls.qualified.rpartition(".")
        try:
            found = importlib.import_module(module)
        except ImportError:
            return None
        for part in name.split("."):
            found = getattr(found, part, None)
        return found if isinstance(found, type) else None

    def __repr__(cls) -> str:
        return f"<layer {cls.qualified!r}, by name>"


@functools.cache
def named_layer(qualified: str) -> NamedLayer:
    """The stand-in class for the layer class `qualified` ("transformers.pytorch_utils.Conv1D"),
    created without importing its package, one per name (pickled as this call); its `__name__` is
    the class's own ("Conv1D")."""
    _, _, name = qualified.rpartition(".")
    return NamedLayer(name.rpartition(".")[2], (), {"qualified": qualified, "__qualname__": name})


copyreg.pickle(NamedLayer, lambda stand_in: (named_layer, (stand_in.qualified,)))


def conv_padding_amounts(
    padding: str | int | Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int] | int = 1
) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per spatial dim, first spatial dim first, as torch pads a convolution.

    `padding` is "valid" (none), "same" (total dilation·(kernel−1) per dim, the odd element after:
    torch's `_conv_forward` and `F.conv*d(padding="same")`), an int, or one int per dim (the same
    amount on both sides). Returns one (before, after) pair of ints per entry of `kernel_size`.
    Raises ValueError for another string.
    """
    dims = len(kernel_size)
    dilation = (dilation,) * dims if isinstance(dilation, int) else tuple(dilation)
    if padding == "valid":
        return ((0, 0),) * dims
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((total // 2, total - total // 2) for total in totals)
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'valid', 'same' or numbers; got {padding!r}")
    amounts = (padding,) * dims if isinstance(padding, int) else tuple(padding)
    return tuple((int(p), int(p)) for p in amounts)


def padding_amounts(module: nn.modules.conv._ConvNd) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per spatial dim of a convolution module (see `conv_padding_amounts`).

    The amounts hold for every `padding_mode`; the mode says what is added (zeros, reflected,
    replicated or wrapped values).
    """
    return conv_padding_amounts(module.padding, module.kernel_size, module.dilation)


def uses_running_stats(module: nn.Module) -> bool:
    """Whether a normalisation layer normalises with its running statistics instead of the input's.

    An InstanceNorm: with `track_running_stats=True` in eval mode (torch's `_InstanceNorm.forward`
    passes `use_input_stats = training or not track_running_stats`). A BatchNorm: in eval mode when it
    holds both running statistics (torch's `_BatchNorm.forward`: `bn_training = running_mean is None
    and running_var is None` outside training; track_running_stats=False leaves them None). False in
    training mode and for layers without running statistics (LayerNorm, GroupNorm, RMSNorm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return not module.training and module.running_mean is not None and module.running_var is not None
    return bool(getattr(module, "track_running_stats", False)) and not module.training
