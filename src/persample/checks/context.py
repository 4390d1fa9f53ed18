"""The model, loss and batch the checks run on: float32 or wider, autocast off, a few samples.

Whatever the mode, the checks compute in float32 or wider (a half-precision model is checked on a
float32 copy) with autocast disabled, so a 5% discrepancy stands far above rounding. They run on
the first `CHECK_SAMPLES` samples of the example batch (the whole batch if the model refuses a
smaller one), and leave the model's buffers and the global random state as they found them.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..batch import CallArgs
from ..contract import LossFn, trainable_parameters
from ..observe import Observation, observe
from ..state import copy_model

CHECK_SAMPLES = 4
HALF = (torch.float16, torch.bfloat16)


@dataclass
class CheckReport:
    """What the checks ran, what they skipped and why, and what they cost (seconds)."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        skipped = "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return f"checks {', '.join(self.ran) or 'none'} in {self.seconds * 1e3:.1f} ms" + (f" (skipped {skipped})" if skipped else "")


@contextmanager
def no_autocast():
    """Disable autocast on every device type for the block."""
    with ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if device_type == "cpu" or torch.cuda.is_available():
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


class CheckContext:
    """The example batch and model as the checks see them; observations are made once and kept."""

    def __init__(self, method_name: str, model: nn.Module, loss_fn: LossFn, call: CallArgs, targets: torch.Tensor,
                 capture: Callable[[nn.Module], frozenset[nn.Module]] | None = None) -> None:
        """`capture(check_model)`: the modules whose calls the observation records."""
        self.method_name = method_name
        self.model, self.loss_fn, self.call, self.targets = model, loss_fn, call, targets
        self.report = CheckReport()
        dtype = next(iter(trainable_parameters(model).values())).dtype
        self.widened = dtype in HALF
        if self.widened:
            self.check_model = copy_model(model).float()
            call, targets = call.map(_widen), _widen(targets)
        else:
            self.check_model = model
        self.full_call, self.full_targets = call, targets
        size = min(call.batch_size, CHECK_SAMPLES)
        self.check_call, self.check_targets = call.select(slice(0, size)), targets[:size]
        self.capture = capture(self.check_model) if capture else frozenset()
        self._observation: Observation | None = None
        self.mutated_buffers: frozenset[str] = frozenset()

    @property
    def batch_size(self) -> int:
        return self.check_targets.shape[0]

    @property
    def params(self) -> dict[str, nn.Parameter]:
        return trainable_parameters(self.check_model)

    def observation(self) -> Observation:
        """The instrumented forward of the check batch (made once, kept with its graph)."""
        if self._observation is None:
            with no_autocast():
                try:
                    found = observe(self.check_model, self.loss_fn, self.check_call, self.check_targets, capture=self.capture)
                except Exception:
                    if self.check_targets.shape[0] == self.full_targets.shape[0]:
                        raise
                    # A model that needs its full batch (a fixed-size state): check on all of it.
                    self.check_call, self.check_targets = self.full_call, self.full_targets
                    found = observe(self.check_model, self.loss_fn, self.check_call, self.check_targets, capture=self.capture)
            self._observation = found
        return self._observation

    @contextmanager
    def timed(self):
        """Count the block's time as the checks' (building the step is not a check)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.report.seconds += time.perf_counter() - start

    def ran(self, name: str) -> None:
        self.report.ran.append(name)

    def skipped(self, name: str, why: str) -> None:
        self.report.skipped[name] = why

    def finish(self) -> CheckReport:
        if self._observation is not None:  # keep what the step needs, free the graph
            self.mutated_buffers = frozenset(self._observation.mutated_buffers)
            self._observation = None
        return self.report


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in HALF else tensor
