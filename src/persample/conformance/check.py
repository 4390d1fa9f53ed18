"""Run one conformance cell: prepare the method, compute, compare with the float64 reference."""
from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..errors import LossNotPerSample, Unsupported
from ..modes import get_mode
from ..reference import compare, reference_grads, tolerance_for
from ..workloads import Problem, Workload
from .cells import Cell
from .conditioning import well_conditioned_seed
from .records import Record

BATCH_SIZE = 8


class ReferenceCache:
    """Float64 references per (workload, dtype, device), and each workload's seed."""

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size
        self._seeds: dict[str, int] = {}
        self._references: dict[tuple, dict[str, torch.Tensor]] = {}

    def seed(self, workload: Workload) -> int:
        """The workload's batch seed: the first that keeps ReLU inputs away from the kink
        (`conditioning.well_conditioned_seed`), cached.
        """
        if workload.name not in self._seeds:
            self._seeds[workload.name] = well_conditioned_seed(workload, self.batch_size)
        return self._seeds[workload.name]

    def problem(self, workload: Workload, dtype: torch.dtype, device: str) -> Problem:
        """A fresh problem per cell, so a method that corrupts its model harms no other cell."""
        return workload.build("small", self.batch_size, self.seed(workload), device, dtype)

    def reference(self, workload: Workload, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
        """Loop in float64 on the values of the `dtype` model and batch, upcast."""
        key = (workload.name, dtype, device)
        if key not in self._references:
            p = self.problem(workload, dtype, device)
            self._references[key] = reference_grads(p.model, p.inputs, p.targets, p.loss_fn)
        return self._references[key]


def run_cell(cell: Cell, cache: ReferenceCache) -> Record:
    """The cell's outcome: pass, fail (with the measured error or the exception), unsupported (with
    the method's reason and the failed assumption), error (LossNotPerSample) or reference."""
    method, mode = cell.method, get_mode(cell.mode)
    tolerance = tolerance_for(cell.mode)
    record = Record(
        id=cell.id, method=method.name, workload=cell.workload.name, dtype=cell.mode, device=cell.device,
        outcome="fail", peer=method.capabilities.peer, tolerance=asdict(tolerance), batch_size=cache.batch_size,
    )
    start = time.perf_counter()
    declared = True  # until the method's declared refusals have passed
    try:
        problem = cache.problem(cell.workload, cell.dtype, cell.device)
        record.batch_size = problem.batch_size
        param = next(p for p in problem.model.parameters() if p.requires_grad)
        refused = method.problem(problem.model, param.device, param.dtype)
        if refused is not None:
            raise refused
        declared = False
        with mode.active(cell.device):
            step = method.prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))
            grads = step(problem.inputs, problem.targets)
    except Unsupported as unsupported:
        record.outcome, record.reason, record.assumption = "unsupported", str(unsupported), unsupported.assumption
        record.declared = declared
    except LossNotPerSample as error:
        record.outcome, record.reason, record.error = "error", str(error), type(error).__name__
    except Exception as error:  # a crash is a finding: the record keeps it
        record.reason, record.error = f"{type(error).__name__}: {error}", type(error).__name__
    else:
        checks = getattr(step, "checks", None)
        record.check_ms = round(checks.seconds * 1e3, 3) if checks is not None else None
        if method.capabilities.reference and cell.mode == "float64":
            record.outcome, record.reason = "reference", "the float64 loop is the reference itself"
        else:
            _judge(record, grads, cache.reference(cell.workload, cell.dtype, cell.device), tolerance)
    record.seconds = round(time.perf_counter() - start, 4)
    return record


def _judge(record: Record, grads: dict, reference: dict, tolerance) -> None:
    comparison = compare(grads, reference)
    record.relative_error = comparison.max_relative if comparison.relative else None
    record.per_sample_error = comparison.max_per_sample if comparison.per_sample else None
    if comparison.per_sample:
        record.worst_parameter = max(comparison.per_sample, key=comparison.per_sample.get)
        record.worst_sample = comparison.worst_sample[record.worst_parameter]
    if comparison.within(tolerance):
        record.outcome = "pass"
    else:
        record.reason = comparison.describe(tolerance)
