"""The model, loss and batch the checks run on: float32 or wider, autocast off, a few samples.

Whatever the mode, the checks compute in float32 or wider with autocast disabled, so a 5%
discrepancy stands far above rounding: a half-precision model is widened to float32 in place for
the duration of each check (`persample.state.widened`: the same Parameter objects, so a loss that
reads a parameter through a closure, or a hook on a parameter, is checked as it will run) and
narrowed back exactly. What couples samples or depends on the batch is looked for on the whole
example batch (a capacity limit or a branch on a batch extreme may only show there); the answer
of the method is held against autograd on `CHECK_SAMPLES` of its samples: the first and the last,
and those with the largest and the smallest inputs. Buffers, attributes and the global random
state are left as found.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import time

import torch
from torch import nn

from ..batch import CallArgs
from ..contract import LossFn, trainable_parameters
from ..assumptions import BATCH_FIRST
from ..capabilities import Finding, refusal
from ..observe import Observation, SharedExpansionFailed, observe
from ..state import HALF, widened

CHECK_SAMPLES = 4


@contextmanager
def shared_expansion_refused(method: str) -> Iterator[None]:
    """`observe.SharedExpansionFailed` as the batch-first-layers refusal naming the shared layer."""
    try:
        yield
    except SharedExpansionFailed as failed:
        first = str(failed.error).strip().splitlines()[0][:160] if str(failed.error).strip() else ""
        raise refusal(Finding(
            "is called on arguments every sample shares (one row on dim 0), and the model does not broadcast its "
            f"output over the batch: with that output expanded to each sample the forward fails "
            f"({type(failed.error).__name__}: {first}), so its per-sample gradients cannot be taken from a "
            "per-sample output gradient", failed.call.qualname, failed.call.module), BATCH_FIRST.id, method) from None


@dataclass
class CheckReport:
    """What the checks ran, what they skipped and why, and what they cost (seconds)."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        """One line: the checks that ran, their cost in milliseconds, and those skipped with why."""
        skipped = "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return f"checks {', '.join(self.ran) or 'none'} in {self.seconds * 1e3:.1f} ms" + (f" (skipped {skipped})" if skipped else "")


@contextmanager
def no_autocast() -> Iterator[None]:
    """Disable autocast on every device type for the block."""
    with ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if device_type == "cpu" or torch.cuda.is_available():
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def check_rows(call: CallArgs, size: int) -> list[int]:
    """Up to `size` sample indices: the first, the last, then those whose inputs have the largest and
    the smallest norm (over every floating or integer tensor input), then the next in order."""
    batch = call.batch_size
    norms = torch.zeros(batch, dtype=torch.float64)
    for _, tensor in call.tensors():
        if tensor.dim() > 0 and tensor.shape[0] == batch and tensor.numel():
            norms += tensor.detach().reshape(batch, -1).double().cpu().norm(dim=1)
    order = [0, batch - 1, int(norms.argmax()), int(norms.argmin()), *range(batch)]
    return sorted(_first_unique(order, size))


def _first_unique(values: list[int], size: int) -> set[int]:
    chosen: list[int] = []
    for value in values:
        if value not in chosen:
            chosen.append(value)
        if len(chosen) == size:
            break
    return set(chosen)


class CheckContext:
    """The example batch as the checks see it; the instrumented forward is made once and kept."""

    def __init__(self, method_name: str, model: nn.Module, loss_fn: LossFn, call: CallArgs, targets: torch.Tensor,
                 capture: Callable[[nn.Module], frozenset[nn.Module]] | None = None) -> None:
        """`capture(model)`: the modules whose calls the observation records."""
        self.method_name = method_name
        self.model, self.loss_fn = model, loss_fn
        self.check_model = model
        self.report = CheckReport()
        dtype = next(iter(trainable_parameters(model).values())).dtype
        self.widened = dtype in HALF
        if self.widened:
            call, targets = call.map(_widen), _widen(targets)
        self.full_call, self.full_targets = call, targets
        rows = torch.tensor(check_rows(call, CHECK_SAMPLES), device=targets.device)
        self.rows = rows.tolist()
        self.check_call, self.check_targets = call.select(rows), targets[rows]
        self.full_size = targets.shape[0]
        self.capture = capture(model) if capture else frozenset()
        self._observation: Observation | None = None
        self.mutated_buffers: frozenset[str] = frozenset()

    @property
    def batch_size(self) -> int:
        """The number of check rows (samples the checks use)."""
        return self.check_targets.shape[0]

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """The check model's trainable parameters by name."""
        return trainable_parameters(self.check_model)

    @contextmanager
    def checking(self) -> Iterator[None]:
        """The block is a check: timed, autocast off, the model widened to float32 if it is half."""
        start = time.perf_counter()
        try:
            with no_autocast(), widened(self.model):
                yield
        finally:
            self.report.seconds += time.perf_counter() - start

    def observation(self) -> Observation:
        """The instrumented forward of the whole example batch (made once, inside a `checking`
        block). Its graph and captured tensors are for the checks of that block (`release` frees
        them); the checks of the method's answer make their own forward of the check rows."""
        if self._observation is None:
            with shared_expansion_refused(self.method_name):
                found = observe(self.model, self.loss_fn, self.full_call, self.full_targets, capture=self.capture)
            self._observation = found
            self.mutated_buffers = frozenset(found.mutated_buffers)
        return self._observation

    def release(self) -> None:
        """Keep what the observation found, drop its tensors and graph."""
        if self._observation is not None:
            found = self._observation
            found.outputs, found.losses, found.calls = None, None, []

    def forward(self) -> Observation:
        """A fresh forward of the check rows recording the captured calls, with its own graph."""
        with shared_expansion_refused(self.method_name):
            return observe(self.model, self.loss_fn, self.check_call, self.check_targets, capture=self.capture, watch=False)

    def ran(self, name: str) -> None:
        """Record that the check `name` ran."""
        self.report.ran.append(name)

    def skipped(self, name: str, why: str) -> None:
        """Record that the check `name` was skipped, and `why`."""
        self.report.skipped[name] = why

    def finish(self) -> CheckReport:
        """Release the tensors the checks held; returns the `CheckReport`."""
        self.release()
        return self.report


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in HALF else tensor
