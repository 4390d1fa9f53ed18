"""A conformance cell is (method, workload, mode, device); its id reads `vmap-mnist_cnn-float32-cpu`.

Two sets of modes, both read from `persample.modes.MODES`: the full product (every mode the
device offers: `modes_for`, what `persample conformance` and the nightly run) and the CI profile
(the modes whose `Mode.ci` names the workload's family: float32 and one reduced-precision mode per
family, bfloat16 for the zoo and bfloat16 autocast for the adversarial family).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.base import Method
from ..modes import ci_modes, get_mode, modes_on
from ..workloads import Workload

ALL = "all"


def family(workload: Workload) -> str:
    """'adversarial' for a workload tagged so, else 'zoo'."""
    return "adversarial" if "adversarial" in workload.tags else "zoo"


@dataclass(frozen=True)
class Cell:
    """One conformance cell: a method on a workload in a mode (dtype and settings) on a device type."""

    method: Method
    workload: Workload
    mode: str
    device: str

    @property
    def id(self) -> str:
        """The cell's test id, '<method>-<workload>-<mode>-<device>'."""
        return f"{self.method.name}-{self.workload.name}-{self.mode}-{self.device}"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the cell's mode."""
        return get_mode(self.mode).dtype


def declared_modes(device: str) -> tuple[str, ...]:
    """The modes `MODES` declares for this device's type, in display order (a type no mode names,
    such as "mps", gets the CPU's), before asking the hardware."""
    return modes_on(torch.device(device).type) or modes_on("cpu")


def modes_for(device: str) -> tuple[str, ...]:
    """Every compute mode this device offers, in display order (bfloat16 and TF32 only where the GPU has them)."""
    return tuple(m for m in declared_modes(device) if get_mode(m).unsupported_reason(torch.device(device)) is None)


def modes_of(workload: Workload, device: str, modes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The modes a workload's cells run in: the CI profile by default, all with `("all",)`."""
    offered = modes_for(device)
    if not modes:
        return tuple(m for m in ci_modes(family(workload)) if m in offered)
    if ALL in modes:
        return offered
    return tuple(m for m in modes if m in offered)


def cells(
    methods: list[Method], workloads: list[Workload], device: str, modes: tuple[str, ...] | None = None
) -> list[Cell]:
    """Every (method, workload, mode) cell on `device`, methods outermost."""
    return [Cell(m, w, mode, device) for m in methods for w in workloads for mode in modes_of(w, device, modes)]
