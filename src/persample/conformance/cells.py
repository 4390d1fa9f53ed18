"""A conformance cell is (method, workload, mode, device); its id reads `vmap-mnist_cnn-float32-cpu`.

Two sets of modes: the full product (`ALL_MODES`, what `persample conformance` and the nightly run)
and the CI profile, float32 and one reduced-precision mode per family (`CI_MODES`): bfloat16 for
the zoo, bfloat16 autocast for the adversarial family (mixed precision is where its models break).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.base import Method
from ..modes import get_mode
from ..workloads import Workload

# Modes per device type. "tf32" is float32 with TensorFloat-32 matrix units: an NVIDIA mode.
ALL_MODES = {
    "cpu": ("float64", "float32", "bfloat16", "float16", "autocast-bf16"),
    "cuda": ("float64", "float32", "tf32", "bfloat16", "float16", "autocast-bf16"),
}
CI_MODES = {"zoo": ("float32", "bfloat16"), "adversarial": ("float32", "autocast-bf16")}
ALL = "all"


def family(workload: Workload) -> str:
    return "adversarial" if "adversarial" in workload.tags else "zoo"


@dataclass(frozen=True)
class Cell:
    method: Method
    workload: Workload
    mode: str
    device: str

    @property
    def id(self) -> str:
        return f"{self.method.name}-{self.workload.name}-{self.mode}-{self.device}"

    @property
    def dtype(self) -> torch.dtype:
        return get_mode(self.mode).dtype


def modes_for(device: str) -> tuple[str, ...]:
    """Every compute mode this device type offers (bfloat16 and TF32 only where the GPU has them)."""
    modes = ALL_MODES.get(device, ALL_MODES["cpu"])
    return tuple(m for m in modes if get_mode(m).unsupported_reason(torch.device(device)) is None)


def modes_of(workload: Workload, device: str, modes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The modes a workload's cells run in: the CI profile by default, all with `("all",)`."""
    offered = modes_for(device)
    if not modes:
        return tuple(m for m in CI_MODES[family(workload)] if m in offered)
    if ALL in modes:
        return offered
    return tuple(m for m in modes if m in offered)


def cells(
    methods: list[Method], workloads: list[Workload], device: str, modes: tuple[str, ...] | None = None
) -> list[Cell]:
    """Every (method, workload, mode) cell on `device`, methods outermost."""
    return [Cell(m, w, mode, device) for m in methods for w in workloads for mode in modes_of(w, device, modes)]
