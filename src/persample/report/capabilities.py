"""The capability table, generated from the registered methods' `Capabilities`: every restriction
of each method (devices and dtypes with their reasons, layers, packages, the assumptions it checks on
the example batch, every refusal it declares), peer or ours, and whether it checks itself."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capabilities import Capabilities
from ..contract import COUPLING
from ..methods.registry import registered
from .matrix import dtype_key


@dataclass(frozen=True)
class CapabilityRow:
    """One method's line of the capability table: every restriction its `Capabilities` declares, as
    text (`tests/report/test_capabilities.py` holds each field of `Capabilities` to a column here)."""

    name: str
    kind: str  # "peer", or "ours" (with ", the reference" or ", chooses per model")
    summary: str
    framework: str
    devices: str  # the device types it runs on, then why it does not run on others
    dtypes: str  # the dtypes it offers, then why it does not offer others
    layers: str
    requires: str
    available: str
    checks_itself: str  # "yes: ..." or "no: ...": whether it holds its own answer to the definition
    notes: str
    relies_on: tuple[str, ...]  # the assumptions it checks on the example batch
    refuses: tuple[str, ...]  # every declared refusal: "<what> (<assumption id>)"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_names(dtypes: frozenset[torch.dtype]) -> str:
    return ", ".join(sorted((_dtype_name(d) for d in dtypes), key=dtype_key))


def _with_reasons(offered: str, reasons: dict[str, str]) -> str:
    """The offered ones, then "; not <name>: <reason>" for each one with a reason."""
    return offered + "".join(f"; not {name}: {why}" for name, why in sorted(reasons.items()))


def _kind(caps: Capabilities) -> str:
    if caps.peer:
        return "peer"
    return "ours" + (", the reference" if caps.reference else ", chooses per model" if caps.chooser else "")


def _checks_itself(caps: Capabilities) -> str:
    if caps.reference:
        return "yes: it is the reference"
    if caps.checks_itself:
        return "yes: its answer on the example batch against autograd, and a guard on every call"
    if caps.chooser:
        return "no: the method it picks is checked (its own checks, or auto's verification and guard)"
    return "no: auto verifies it on the example batch and guards every call"


def capability_rows() -> list[CapabilityRow]:
    """One row per registered method, in registration order."""
    rows = []
    for name, method in registered().items():
        caps = method.capabilities
        unavailable = method.unavailable_reason()
        rows.append(CapabilityRow(
            name=name, kind=_kind(caps), summary=caps.summary, framework=caps.framework,
            devices=_with_reasons(", ".join(sorted(caps.devices)), caps.device_reasons),
            dtypes=_with_reasons(_dtype_names(caps.dtypes),
                                 {_dtype_name(d): why for d, why in caps.dtype_reasons.items()}),
            layers=caps.layer_vocabulary(),
            requires=", ".join(package for _, package in caps.requires) or "—",
            available="yes" if unavailable is None else f"no: {unavailable}",
            checks_itself=_checks_itself(caps),
            notes=caps.notes,
            relies_on=caps.relies_on,
            refuses=tuple(f"{r.summary} ({r.assumption})" for r in (COUPLING, *caps.all_refusals())),
        ))
    return rows
