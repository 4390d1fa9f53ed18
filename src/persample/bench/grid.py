"""Which benchmark cases exist: workload × batch size × mode × method × variant, per kind of machine.

A `Grid` is rectangular (asv parametrizes by a cartesian product); combinations a machine cannot
run are skipped with a reason (`persample.bench.skips`). The method axis is every registered
method plus the non-private `baseline`, the workload axis every registered workload carrying the
grid's tag (`workloads.BENCH`, `workloads.QUICK`; the CPU grid at each one's `cpu_size`), so a new
method or workload is benchmarked without editing a list. Workloads are referred to as "name"
(size "full") or "name:small".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..methods.registry import registered
from ..workloads import BENCH, QUICK, all_workloads
from ..modes import benchmark_modes

BASELINE = "baseline"
VARIANTS = ("eager", "captured", "reuse")
"""eager: the prepared step as is; captured: replayed from a CUDA graph (`persample.capture`); reuse:
the step writing into the output buffers it keeps (`PreparedStep.reuse_outputs`)."""
PARAM_NAMES = ["workload", "batch_size", "dtype", "method", "variant"]
GRID_ENV = "PERSAMPLE_BENCH_GRID"

# Three batch sizes at least, a factor 4 apart, so a plot of time against batch size shows how
# each method scales (one batch size draws a column of points).
CPU_BATCH_SIZES = (16, 64, 256)
QUICK_BATCH_SIZES = (4, 16, 64)


@dataclass(frozen=True, order=True)
class Case:
    """One benchmark case; `id` reads like `vmap-mlp-full-b256-float32-eager`."""

    workload: str
    size: str
    batch_size: int
    mode: str
    method: str
    variant: str = "eager"

    @property
    def id(self) -> str:
        """The case's id, '<method>-<workload>-<size>-b<batch>-<mode>-<variant>' (what --cases matches)."""
        return f"{self.method}-{self.workload}-{self.size}-b{self.batch_size}-{self.mode}-{self.variant}"

    @property
    def workload_ref(self) -> str:
        """The workload as asv's parameter names it: 'name' or 'name:size'."""
        return workload_ref(self.workload, self.size)

    @property
    def is_baseline(self) -> bool:
        """Whether this case times the baseline (plain training) rather than a method."""
        return self.method == BASELINE

    def params(self) -> tuple:
        """The asv parameter tuple, in `PARAM_NAMES` order."""
        return (self.workload_ref, self.batch_size, self.mode, self.method, self.variant)

    @classmethod
    def from_params(cls, workload_ref: str, batch_size: int, mode: str, method: str, variant: str) -> "Case":
        """The case of asv's parameters; a workload without ':size' is the full size."""
        workload, _, size = workload_ref.partition(":")
        return cls(workload, size or "full", int(batch_size), mode, method, variant)

    def baseline(self) -> "Case":
        """The non-private baseline of the same workload, batch and mode."""
        return Case(self.workload, self.size, self.batch_size, self.mode, BASELINE, "eager")


def workload_ref(name: str, size: str) -> str:
    """How a grid names a workload at a size: "name" for size "full", else "name:size"."""
    return name if size == "full" else f"{name}:{size}"


@dataclass(frozen=True)
class TaggedWorkloads:
    """A grid's workload axis: the registered workloads tagged `tag`, in registration order, each at
    size "full" or, with `cpu_sizes`, at its `cpu_size` (the CPU grid: the full-size sequence and
    CIFAR models take seconds per step at B=256, times 12 methods, warm-up and memory runs)."""

    tag: str
    cpu_sizes: bool = False

    def __call__(self) -> tuple[str, ...]:
        """The workload references, read from the registry now (a workload registered later joins)."""
        return tuple(workload_ref(w.name, w.cpu_size if self.cpu_sizes else "full")
                     for w in all_workloads() if self.tag in w.tags)


@dataclass(frozen=True)
class NamedWorkloads:
    """A grid's workload axis named outright ("name" or "name:size"): a sub-grid asking one question."""

    refs: tuple[str, ...]

    def __call__(self) -> tuple[str, ...]:
        return self.refs


@dataclass(frozen=True)
class UnionOfWorkloads:
    """The workload axis of a union grid: every workload of `grids`, in first-seen order."""

    grids: tuple["Grid", ...]

    def __call__(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ref for grid in self.grids for ref in grid.workloads))


@dataclass(frozen=True)
class Grid:
    """A rectangular benchmark grid; its modes are those `persample.modes.MODES` benchmarks on its
    `devices` (device types), so a new mode joins the grids of the devices it names."""

    name: str
    description: str
    members: TaggedWorkloads | NamedWorkloads | UnionOfWorkloads
    batch_sizes: tuple[int, ...]
    devices: tuple[str, ...]
    variants: tuple[str, ...]

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this grid times, in display order (`Mode.benchmarked` naming one of `devices`)."""
        return benchmark_modes(*self.devices)

    @property
    def workloads(self) -> tuple[str, ...]:
        """The workload axis ("name" or "name:small"): `members` read now (by tag, from the workload registry)."""
        return self.members()

    def methods(self) -> list[str]:
        """The baseline and every registered method but choosers (`auto` times the method it picks)."""
        return [BASELINE, *(name for name, m in registered().items() if not m.capabilities.chooser)]

    def params(self) -> list[list]:
        """asv's `params`: one list per name in `PARAM_NAMES`."""
        return [list(self.workloads), list(self.batch_sizes), list(self.modes), self.methods(), list(self.variants)]

    def cases(self) -> list[Case]:
        """Every case of the grid: workloads x batch sizes x modes x methods x variants."""
        return [
            Case.from_params(w, b, m, method, v)
            for w in self.workloads for b in self.batch_sizes for m in self.modes
            for method in self.methods() for v in self.variants
        ]


GRIDS = {
    grid.name: grid
    for grid in (
        Grid("gpu", "the full grid for CUDA machines", TaggedWorkloads(BENCH), (32, 256, 1024, 4096), ("cuda",),
             ("eager", "captured")),
        Grid("cpu", "the reduced CPU grid: float32, heavy models at size small", TaggedWorkloads(BENCH, cpu_sizes=True),
             CPU_BATCH_SIZES, ("cpu",), ("eager",)),
        Grid("quick", "a few cases for pull requests and the main job", TaggedWorkloads(QUICK), QUICK_BATCH_SIZES,
             ("cpu",), ("eager",)),
        # Where a peer was fastest on the CPU (reports/results.csv, 2026-11): is every rule-based
        # method at the memory floor? (docs/benchmarks.md, "The CPU floor")
        Grid("cpu-floor", "the CPU's memory-bound cases: mlp and linear_large at B=32, 64, 256",
             NamedWorkloads(("mlp", "linear_large")), (32, 64, 256), ("cpu",), ("eager", "reuse")),
    )
}


def union(name: str, grids: list[Grid]) -> Grid:
    """Every value of every grid, in first-seen order (asv publish projects results onto it)."""

    def merged(axis: str) -> tuple:
        return tuple(dict.fromkeys(value for grid in grids for value in getattr(grid, axis)))

    return Grid(name, "the union of all grids", UnionOfWorkloads(tuple(grids)), merged("batch_sizes"),
                merged("devices"), merged("variants"))


GRIDS["all"] = union("all", list(GRIDS.values()))


def get_grid(name: str) -> Grid:
    """The benchmark grid named `name`. Raises `ValueError` naming the known grids for another."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
    return GRIDS[name]


def default_grid_name() -> str:
    """$PERSAMPLE_BENCH_GRID, else "gpu" with CUDA and "cpu" without."""
    return os.environ.get(GRID_ENV) or ("gpu" if torch.cuda.is_available() else "cpu")


def current_grid() -> Grid:
    """The grid this machine runs by default: $PERSAMPLE_BENCH_GRID, else 'gpu' with CUDA and 'cpu' without."""
    return get_grid(default_grid_name())
