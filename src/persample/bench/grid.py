"""Which benchmark cases exist: workload × batch size × mode × method × variant, per kind of machine.

A `Grid` is rectangular (asv parametrizes by a cartesian product); combinations a machine cannot
run are skipped with a reason (`persample.bench.skips`). The method axis is every registered
method plus the non-private `baseline`, so a new method is benchmarked without editing a list.
Workloads are referred to as "name" (size "full") or "name:small".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..methods.registry import registered

BASELINE = "baseline"
VARIANTS = ("eager", "captured")
PARAM_NAMES = ["workload", "batch_size", "dtype", "method", "variant"]
GRID_ENV = "PERSAMPLE_BENCH_GRID"

ZOO = ("mlp", "mnist_cnn", "cifar_cnn", "text_classifier", "transformer_block", "lstm_classifier", "linear_large")
# On a CPU the full-size sequence and CIFAR models take seconds per step at B=256 (x 12 methods x
# warm-up and memory runs): those run at size "small" so the whole grid fits in 15 minutes.
CPU_ZOO = ("mlp", "mnist_cnn", "cifar_cnn:small", "text_classifier:small", "transformer_block:small",
           "lstm_classifier:small", "linear_large")
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
        return f"{self.method}-{self.workload}-{self.size}-b{self.batch_size}-{self.mode}-{self.variant}"

    @property
    def workload_ref(self) -> str:
        return self.workload if self.size == "full" else f"{self.workload}:{self.size}"

    @property
    def is_baseline(self) -> bool:
        return self.method == BASELINE

    def params(self) -> tuple:
        """The asv parameter tuple, in `PARAM_NAMES` order."""
        return (self.workload_ref, self.batch_size, self.mode, self.method, self.variant)

    @classmethod
    def from_params(cls, workload_ref: str, batch_size: int, mode: str, method: str, variant: str) -> "Case":
        workload, _, size = workload_ref.partition(":")
        return cls(workload, size or "full", int(batch_size), mode, method, variant)

    def baseline(self) -> "Case":
        """The non-private baseline of the same workload, batch and mode."""
        return Case(self.workload, self.size, self.batch_size, self.mode, BASELINE, "eager")


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    workloads: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    modes: tuple[str, ...]
    variants: tuple[str, ...]

    def methods(self) -> list[str]:
        """The baseline and every registered method but choosers (`auto` times the method it picks)."""
        return [BASELINE, *(name for name, m in registered().items() if not m.capabilities.chooser)]

    def params(self) -> list[list]:
        """asv's `params`: one list per name in `PARAM_NAMES`."""
        return [list(self.workloads), list(self.batch_sizes), list(self.modes), self.methods(), list(self.variants)]

    def cases(self) -> list[Case]:
        return [
            Case.from_params(w, b, m, method, v)
            for w in self.workloads for b in self.batch_sizes for m in self.modes
            for method in self.methods() for v in self.variants
        ]


GRIDS = {
    grid.name: grid
    for grid in (
        Grid("gpu", "the full grid for CUDA machines", ZOO, (32, 256, 1024, 4096),
             ("float32", "tf32", "bfloat16", "float16"), VARIANTS),
        Grid("cpu", "the reduced CPU grid: float32, heavy models at size small", CPU_ZOO, CPU_BATCH_SIZES,
             ("float32",), ("eager",)),
        Grid("quick", "a few cases for pull requests and the main job", ("mlp", "mnist_cnn"), QUICK_BATCH_SIZES,
             ("float32",), ("eager",)),
    )
}


def union(name: str, grids: list[Grid]) -> Grid:
    """Every value of every grid, in first-seen order (asv publish projects results onto it)."""

    def merged(axis: str) -> tuple:
        return tuple(dict.fromkeys(value for grid in grids for value in getattr(grid, axis)))

    return Grid(name, "the union of all grids", merged("workloads"), merged("batch_sizes"),
                merged("modes"), merged("variants"))


GRIDS["all"] = union("all", list(GRIDS.values()))


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
    return GRIDS[name]


def default_grid_name() -> str:
    """$PERSAMPLE_BENCH_GRID, else "gpu" with CUDA and "cpu" without."""
    return os.environ.get(GRID_ENV) or ("gpu" if torch.cuda.is_available() else "cpu")


def current_grid() -> Grid:
    return get_grid(default_grid_name())
