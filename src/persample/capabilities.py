"""What a method declares it can do, as data: devices, dtypes, packages, the assumptions it relies
on and its refusals, each a predicate with its reason. The conformance grid, the benchmark skips,
`auto` and the report's capability table all read these; one message builder words every refusal.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .assumptions import LAYER_RULES, MATCHES_DEFINITION, get_assumption
from .errors import Unsupported

FLOATING = frozenset({torch.float64, torch.float32, torch.bfloat16, torch.float16})


@dataclass(frozen=True)
class Finding:
    """Where and why a refusal applies: `why` completes "layer <qualname> (<type>) ..."."""

    why: str
    qualname: str | None = None
    module: nn.Module | None = None


Predicate = Callable[[nn.Module, torch.device, torch.dtype], "Finding | None"]


@dataclass(frozen=True)
class Refusal:
    """One kind of model, device or dtype a method refuses.

    `finds(model, device, dtype)` returns the first offending place as a `Finding`, or None.
    `summary` is the line of the capability table.
    """

    assumption: str
    summary: str
    finds: Predicate


def refusal(finding: Finding, assumption: str, method: str | None) -> Unsupported:
    """The one wording of a refusal: where, why, and the fix of the failed assumption."""
    kind = type(finding.module).__name__ if finding.module is not None else None
    where = ""
    if finding.qualname is not None or finding.module is not None:
        where = f"layer {finding.qualname or '<root>'}" + (f" ({kind}) " if kind else " ")
    text = where + finding.why
    if "Fix:" not in text:
        text += f". Fix: {get_assumption(assumption).fix}"
    return Unsupported(text, method=method, layer=kind, assumption=assumption)


@dataclass(frozen=True)
class Capabilities:
    """What a method declares it can do; everything that enumerates methods reads this.

    Every field but `name`, `summary` and `notes` restricts the method, and each is a column of the
    report's capability table (`report/capabilities.py`): a new one needs its column, or
    `tests/report/test_capabilities.py` fails.
    """

    name: str
    summary: str
    framework: str = "torch"
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    # Why a device type outside `devices` is not offered, where there is more to say than "does not run".
    device_reasons: dict[str, str] = field(default_factory=dict, compare=False)
    dtypes: frozenset[torch.dtype] = FLOATING
    # Why a dtype outside `dtypes` is not offered, where there is more to say than "not offered".
    dtype_reasons: dict[torch.dtype, str] = field(default_factory=dict, compare=False)
    # Module types whose own parameters the method can differentiate per sample (subclasses
    # match). None: any module autograd can differentiate.
    layers: tuple[type[nn.Module], ...] | None = None
    # (import name, pip name) of every package the method needs beyond torch.
    requires: tuple[tuple[str, str], ...] = ()
    # Ids of `persample.assumptions` the method relies on, checked on the example batch.
    relies_on: tuple[str, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    peer: bool = False
    reference: bool = False
    chooser: bool = False  # picks another method for each model (`auto`): not benchmarked or ranked itself
    notes: str = ""

    @property
    def checks_itself(self) -> bool:
        """Whether the method holds its own answer to the definition (its checks and per-call guard,
        `matches-definition`), or is the reference; a peer or plugin does not, so `auto` verifies it
        on the example batch and guards every call."""
        return self.reference or MATCHES_DEFINITION.id in self.relies_on

    def layer_vocabulary(self) -> str:
        """Human-readable list of supported layer types, for errors and the report."""
        if self.layers is None:
            return "any differentiable module"
        return ", ".join(sorted({t.__name__ for t in self.layers}))

    def all_refusals(self) -> tuple[Refusal, ...]:
        """The declared refusals, then the one `layers` implies."""
        if self.layers is None:
            return self.refusals
        return (*self.refusals, outside_vocabulary(self))


def outside_vocabulary(caps: Capabilities) -> Refusal:
    """Every module owning a trainable parameter must be one of `caps.layers`."""
    from .contract import trainable_owners

    def finds(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
        for qualname, module in trainable_owners(model):
            if not isinstance(module, caps.layers):
                return Finding(f"has trainable parameters and is outside this method's vocabulary "
                               f"({caps.layer_vocabulary()})", qualname, module)
        return None

    return Refusal(LAYER_RULES.id, f"trainable layers outside: {caps.layer_vocabulary()}", finds)
