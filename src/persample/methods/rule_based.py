"""Shared by the methods built on `persample.rules`: which modules they must handle."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..contract import trainable_owners
from ..errors import Unsupported
from ..rules import LayerRule, rule_for, rule_types

RuleLookup = Callable[[nn.Module], LayerRule | None]


def owners_with_rules(model: nn.Module, lookup: RuleLookup = rule_for) -> dict[nn.Module, LayerRule]:
    """Every module owning a trainable parameter, with its rule (KeyError-free: see `missing_rule`)."""
    return {module: lookup(module) for _, module in trainable_owners(model)}


def missing_rule(model: nn.Module, method: str, lookup: RuleLookup = rule_for) -> Unsupported | None:
    """The first trainable-parameter owner without a rule, as an `Unsupported`, or None."""
    for qualname, module in trainable_owners(model):
        if lookup(module) is None:
            kind = type(module).__name__
            why = (
                "overrides forward() of a supported layer, so the layer's formula may not apply"
                if isinstance(module, rule_types())
                else "has no per-layer rule"
            )
            names = ", ".join(sorted(t.__name__ for t in rule_types()))
            return Unsupported(
                f"layer {qualname or '<root>'} ({kind}) {why}; rules exist for {names}",
                method=method,
                layer=kind,
            )
    return None
