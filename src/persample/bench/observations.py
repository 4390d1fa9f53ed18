"""One measured (or skipped, or failed) case on one machine, whichever harness produced it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .grid import Case

STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class Machine:
    """A machine as the results name it, with what the table shows of it."""

    name: str
    device: str
    gpu: str = ""


@dataclass(frozen=True)
class Observation:
    """One timed (or skipped, failed) benchmark case on one machine, from asv or pytest-benchmark: `status`,
    its `reason`, the median and interquartile range of a step in seconds, peak memory in bytes, and the
    commit and date (ISO 8601 UTC) it ran at.
    """

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
        """One row of the table per key: the values of `results_schema.KEY_COLUMNS`, in that order."""
        c = self.case
        return (self.machine.name, self.machine.gpu, c.workload, c.size, c.batch_size, c.mode, c.method, c.variant)


def iso_from_millis(millis: float) -> str:
    """Milliseconds since the Unix epoch (asv's dates) as ISO 8601 UTC text, to the second."""
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")
