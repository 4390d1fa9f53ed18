"""A conformance cell is (method, workload, mode, device); its id reads `vmap-mnist_cnn-float32-cpu`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.registry import Method
from ..modes import get_mode
from ..workloads import Workload

# Modes per device type. "tf32" is float32 with TensorFloat-32 matrix units: an NVIDIA mode.
MODES = {
    "cpu": ("float64", "float32", "bfloat16", "float16"),
    "cuda": ("float64", "float32", "tf32", "bfloat16", "float16"),
}


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
    """The compute modes this device type offers (bfloat16 and TF32 only where the GPU has them)."""
    modes = MODES.get(device, MODES["cpu"])
    return tuple(m for m in modes if get_mode(m).unsupported_reason(torch.device(device)) is None)


def cells(
    methods: list[Method], workloads: list[Workload], device: str, modes: tuple[str, ...] | None = None
) -> list[Cell]:
    """Every (method, workload, mode) cell on `device`, methods outermost."""
    chosen = modes or modes_for(device)
    return [Cell(m, w, mode, device) for m in methods for w in workloads for mode in chosen]
