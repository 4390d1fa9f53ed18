"""A case made ready to measure: model and batch on the device, the method prepared (compiled,
captured, hooked) and warmed up, so that only the per-sample-gradient step is timed."""
from __future__ import annotations

import os

import torch

from ..machine import default_device
from ..methods.registry import Method
from ..workloads import Problem, get_workload
from .grid import Case
from .memory import Meter, meter_for
from ..modes import get_mode
from .providers import provider_for
from .timing import synchronize, warm_up

# JAX would otherwise reserve 75% of the GPU at its first use, starving torch in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

SEED = 0


def build_problem(case: Case, device: torch.device) -> Problem:
    """The case's seeded model and batch, on `device` in the case's dtype."""
    mode = get_mode(case.mode)
    return get_workload(case.workload).build(
        size=case.size, batch_size=case.batch_size, seed=SEED, device=device, dtype=mode.dtype
    )


class PreparedCase:
    """Model, batch and warmed-up step of one case. With `measure_memory`, a memory meter runs from
    before prepare through the first step (no warm-up: a method that cannot fit its one-time costs
    cannot run), or, for a meter whose window is one step, around a step after the warm-up."""

    def __init__(self, case: Case, device: torch.device | None = None, *, measure_memory: bool = False) -> None:
        self.case = case
        self.device = torch.device(device) if device is not None else default_device()
        self.mode = get_mode(case.mode)
        self.method: Method = provider_for(case)
        self.meter: Meter | None = meter_for(self.device, self.method.capabilities.framework) if measure_memory else None
        self._metering = False
        self._flags = self.mode.enable()
        try:
            problem = build_problem(case, self.device)
            self.model, self.loss_fn = problem.model, problem.loss_fn
            self.inputs, self.targets = problem.inputs, problem.targets
            from_prepare = self.meter is not None and self.meter.window == "prepare"
            if from_prepare:
                self._start_meter()
            self.step = self.method.prepare(self.model, self.loss_fn, (self.inputs, self.targets))
            if case.variant == "reuse":  # results overwritten by the next step (`PreparedStep.reuse_outputs`)
                self.step.reuse_outputs()
            self.warmup_steps = 0 if from_prepare else warm_up(self.run)
        except BaseException:
            self.close()
            raise

    def run(self) -> None:
        """One per-sample-gradient step, finished on the device (what the benchmarks time)."""
        self.step(self.inputs, self.targets)
        synchronize(self.device)

    def peak_memory(self) -> int:
        """Peak bytes above model and batch (see `persample.bench.memory`), ending with one step."""
        if self.meter is None:
            raise RuntimeError("this case was prepared without measure_memory=True")
        if self.meter.window == "step":
            self._start_meter()
        self.run()
        return self._stop_meter()

    def _start_meter(self) -> None:
        self.meter.start()
        self._metering = True

    def _stop_meter(self) -> int:
        self._metering = False
        return self.meter.stop()

    def close(self) -> None:
        """Stop a meter left running and restore the TF32 flags (an exiting process needs neither)."""
        if self._metering:
            self._stop_meter()
        self.mode.restore(self._flags)
