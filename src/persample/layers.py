"""Facts about torch layers that several parts of persample need, each written once.

- `nearest_registered`: which entry of a table keyed by layer type applies to a module (the
  layer rules, their FLOP counts and the JAX translation all ask it the same way);
- `padding_amounts`: the zeros (or reflected, replicated, wrapped values) a convolution adds
  before and after each spatial dim (the conv rule, the conv kernel, the JAX translation);
- `uses_running_stats`: whether an InstanceNorm normalises with its running statistics or with the
  instance's own (the norm rule, the norm kernel, the JAX translation);
- `LayerInput`: what one call of a layer received (positional and keyword arguments), as the
  captures record it and the rules read it.

Nothing here imports more than torch.
"""
from __future__ import annotations

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
        """Every argument of `module.forward` by parameter name, defaults filled in. Raises
        TypeError when the arguments do not fit the signature."""
        bound = inspect.signature(module.forward).bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)


def nearest_registered(module: nn.Module | type[nn.Module], table: Mapping[type, Entry]) -> Entry | None:
    """The entry of `table` for `module`'s type or its nearest base class in the table, or None.

    A subclass matches its registered base unless it (or a class between them) overrides
    `forward`: it then computes something else, and the base's entry (a gradient formula, a FLOP
    count, a translation) would describe the wrong function. None when no base class is in
    `table` or the nearest one's `forward` is not the module's.
    """
    kind = module if isinstance(module, type) else type(module)
    for base in kind.__mro__:
        if base in table:
            return table[base] if kind.forward is base.forward else None
    return None


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

    True for an InstanceNorm or BatchNorm with `track_running_stats=True` in eval mode (torch's
    `_InstanceNorm.forward` passes `use_input_stats = training or not track_running_stats`); False
    in training mode and for layers without running statistics (LayerNorm, GroupNorm, RMSNorm).
    """
    return bool(getattr(module, "track_running_stats", False)) and not module.training
