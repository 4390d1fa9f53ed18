"""Workload: a named model factory, a seeded batch factory, a per-sample loss and tags."""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..batch import CallArgs, Inputs
from ..contract import LossFn

SIZES = ("small", "full")
# Tags that put a workload in the benchmark grids (`persample.bench.grid`): "bench" in the GPU and CPU
# grids, "quick" in the quick benchmark of pull requests and the main job.
BENCH = "bench"
QUICK = "quick"
HUGGING_FACE = "huggingface"  # the family built from Hugging Face transformers (workloads/huggingface.py)
# Other packages add workloads under this entry point group: each entry names a module (importing it
# registers its workloads), a `Workload`, or an iterable of them.
ENTRY_POINT_GROUP = "persample.workloads"
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
        """The number of samples, targets.shape[0]."""
        return self.targets.shape[0]


@dataclass(frozen=True)
class Workload:
    """A model, a batch and a per-sample loss, by name.

    `tags`: what the model holds ("conv", "sequence", ...), "adversarial" for the family that breaks
    assumptions, and `BENCH` / `QUICK` for the benchmark grids that time it;
    `breaks`: ids of `persample.assumptions` the model breaks on purpose (the adversarial family);
    `batch_size`: a batch size the workload fixes (T == B layouts, a batch of one or of none);
    `cpu_size`: the size the CPU benchmark grid times it at ("small" where the full model takes
    seconds per step on a CPU).
    """

    name: str
    description: str
    make_model: MakeModel
    make_batch: MakeBatch
    loss_fn: LossFn
    tags: frozenset[str]
    breaks: frozenset[str] = frozenset()
    batch_size: int | None = None
    cpu_size: str = "full"

    def __post_init__(self) -> None:
        if self.cpu_size not in SIZES:
            raise ValueError(f"{self.name}: cpu_size must be one of {SIZES}, got {self.cpu_size!r}")

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
_PLUGINS_LOADED = False


def register_workload(workload: Workload) -> Workload:
    """Add `workload` to the registry under its name (a later one of the same name replaces it);
    returns it. The conformance matrix, the benchmark grids (by tag), the report and auto's nearest
    match read the registry."""
    _WORKLOADS[workload.name] = workload
    return workload


def load_plugins() -> None:
    """Register the workloads of installed packages (entry point group `persample.workloads`), once.

    Raises `TypeError` when an entry point gives something other than a module, a `Workload` or an
    iterable of them.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = entry.load()
        if isinstance(obj, Workload):
            register_workload(obj)
        elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
            for workload in obj:
                if not isinstance(workload, Workload):
                    raise TypeError(f"entry point {entry.name} = {entry.value} holds {workload!r}, not a Workload")
                register_workload(workload)
        elif not hasattr(obj, "__file__"):  # a module registers its workloads when imported
            raise TypeError(f"entry point {entry.name} = {entry.value} is {obj!r}: not a module, Workload or iterable")


def get_workload(name: str) -> Workload:
    """The workload registered as `name`; raises `ValueError` (listing the known ones) otherwise."""
    load_plugins()
    if name not in _WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(_WORKLOADS)}")
    return _WORKLOADS[name]


def all_workloads(*, without_tags: frozenset[str] = frozenset()) -> list[Workload]:
    """Every registered workload, minus those with any of `without_tags`: the zoo written for persample,
    then the Hugging Face family (tag "huggingface": larger, and optional), then the adversarial
    family, each in registration order (this package's modules by name, then the entry-point
    plugins). The first of a kind is what the invariants take as its representative."""
    load_plugins()
    chosen = [w for w in _WORKLOADS.values() if not (w.tags & without_tags)]
    return sorted(chosen, key=lambda w: ("adversarial" in w.tags, HUGGING_FACE in w.tags))  # stable within each
