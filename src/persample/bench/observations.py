"""One measured (or skipped, or failed) case on one machine, whichever harness produced it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .grid import Case

STATUSES = ("ok", "skipped", "failed")
# The columns of the table's key, in the order of `Observation.key`.
KEY_COLUMNS = ("machine", "gpu", "workload", "size", "batch_size", "dtype", "method", "variant")


@dataclass(frozen=True)
class Machine:
    """A machine as the results name it, with what the table shows of it."""

    name: str
    device: str
    gpu: str = ""


@dataclass(frozen=True)
class Observation:
    machine: Machine
    case: Case
    source: str  # "asv" or "pytest-benchmark"
    commit: str
    date: str  # when it ran, ISO 8601 UTC
    status: str
    reason: str = ""
    median_s: float | None = None
    spread_s: float | None = None  # interquartile range
    peak_memory_bytes: int | None = None

    @property
    def key(self) -> tuple:
        """One row of the table per key: the values of `KEY_COLUMNS`."""
        c = self.case
        return (self.machine.name, self.machine.gpu, c.workload, c.size, c.batch_size, c.mode, c.method, c.variant)


def iso_from_millis(millis: float) -> str:
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")
