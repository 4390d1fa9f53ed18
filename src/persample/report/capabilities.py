"""The capability table, generated from the registered methods' `Capabilities`: what each runs on,
the assumptions it checks on the example batch, and every refusal it declares."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..contract import COUPLING
from ..methods.registry import registered
from .matrix import dtype_key


@dataclass(frozen=True)
class CapabilityRow:
    name: str
    kind: str  # "ours", "peer" or "reference"
    summary: str
    framework: str
    devices: str
    dtypes: str
    layers: str
    requires: str
    available: str
    notes: str
    relies_on: str  # the assumptions it checks on the example batch
    refuses: str  # its declared refusals, one per line


def _dtype_names(dtypes: frozenset[torch.dtype]) -> str:
    return ", ".join(sorted((str(d).removeprefix("torch.") for d in dtypes), key=dtype_key))


def capability_rows() -> list[CapabilityRow]:
    """One row per registered method, in registration order."""
    rows = []
    for name, method in registered().items():
        caps = method.capabilities
        kind = "peer" if caps.peer else "reference" if caps.reference else "ours"
        unavailable = method.unavailable_reason()
        rows.append(CapabilityRow(
            name=name, kind=kind, summary=caps.summary, framework=caps.framework,
            devices=", ".join(sorted(caps.devices)), dtypes=_dtype_names(caps.dtypes),
            layers=caps.layer_vocabulary(),
            requires=", ".join(package for _, package in caps.requires) or "—",
            available="yes" if unavailable is None else f"no: {unavailable}",
            notes=caps.notes,
            relies_on=", ".join(caps.relies_on) or "—",
            refuses="; ".join([COUPLING.summary, *(r.summary for r in caps.all_refusals())]),
        ))
    return rows
