"""Workload: a named model factory, a seeded batch factory, a per-sample loss and tags."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..batch import CallArgs, Inputs
from ..contract import LossFn

SIZES = ("small", "full")
MakeModel = Callable[[str], nn.Module]
MakeBatch = Callable[[str, int, torch.Generator], tuple[Inputs, torch.Tensor]]


@dataclass
class Problem:
    """One concrete instance of a workload: a model, a batch and the per-sample loss."""

    workload: "Workload"
    model: nn.Module
    inputs: Inputs
    targets: torch.Tensor
    loss_fn: LossFn

    @property
    def batch_size(self) -> int:
        return self.targets.shape[0]


@dataclass(frozen=True)
class Workload:
    """A model, a batch and a per-sample loss, by name.

    `breaks`: ids of `persample.assumptions` the model breaks on purpose (the adversarial family);
    `batch_size`: a batch size the workload fixes (T == B layouts, a batch of one or of none).
    """

    name: str
    description: str
    make_model: MakeModel
    make_batch: MakeBatch
    loss_fn: LossFn
    tags: frozenset[str]
    breaks: frozenset[str] = frozenset()
    batch_size: int | None = None

    def build(
        self,
        size: str = "small",
        batch_size: int = 8,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Problem:
        """Model and batch, seeded, on `device` in `dtype` (integer inputs stay integer); a
        workload that fixes its batch size ignores `batch_size`."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        batch_size = self.batch_size if self.batch_size is not None else batch_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.make_model(size)
        model = model.to(device=device, dtype=dtype)
        generator = torch.Generator().manual_seed(seed + 1)
        inputs, targets = self.make_batch(size, batch_size, generator)
        inputs = cast_inputs(inputs, device, dtype)
        targets = targets.to(device=device, dtype=dtype if targets.is_floating_point() else None)
        return Problem(self, model, inputs, targets, self.loss_fn)


def cast_inputs(inputs: Inputs, device, dtype: torch.dtype) -> Inputs:
    """Floating tensors to `dtype`, all to `device`; the inputs keep their form (Tensor, tuple, dict)."""
    cast = CallArgs.of(inputs).map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None))
    return cast.to_user()


_WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    _WORKLOADS[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    if name not in _WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(_WORKLOADS)}")
    return _WORKLOADS[name]


def all_workloads(*, without_tags: frozenset[str] = frozenset()) -> list[Workload]:
    """Every registered workload, in registration order, minus those with any of `without_tags`."""
    return [w for w in _WORKLOADS.values() if not (w.tags & without_tags)]
