"""What the asv suites call: the parameters, the clock, the sampling attributes, and setups that
skip cheaply (before building anything) with the reason written to the outcomes log.

asv (asv_runner 0.3) re-runs `setup` before every timing sample, so timed cases are prepared once
per process and reused: a step leaves the model as it found it, so reuse changes nothing measured.
"""
from __future__ import annotations

import functools

from asv_runner.benchmarks.mark import SkipNotImplemented

from ..errors import Unsupported
from ..machine import default_device
from .grid import PARAM_NAMES, Case, current_grid
from .outcomes import describe, record
from .prepared import PreparedCase
from .skips import skip_reason
from .timing import asv_timing, device_clock

__all__ = ["asv_params", "asv_timing", "device_clock", "measured_case", "timed_case"]


def asv_params() -> tuple[list[list], list[str]]:
    """(params, param_names) of this machine's grid (`persample.bench.grid`)."""
    return current_grid().params(), list(PARAM_NAMES)


class AsvCase:
    """A prepared case whose failures during a measured call are written to the outcomes log."""

    def __init__(self, prepared: PreparedCase, kind: str) -> None:
        self.prepared, self.kind = prepared, kind

    def run(self) -> None:
        """One step of the prepared case (what asv times); a failure is written to the outcomes log, then
        raised.
        """
        try:
            self.prepared.run()
        except Exception as error:
            record(self.prepared.case, self.kind, "failed", describe(error))
            raise

    def peak_memory(self) -> int:
        """The case's peak memory in bytes (`PreparedCase.peak_memory`); a failure is written to the outcomes
        log, then raised.
        """
        try:
            return self.prepared.peak_memory()
        except Exception as error:
            record(self.prepared.case, self.kind, "failed", describe(error))
            raise


def open_case(kind: str, params: tuple, measure_memory: bool) -> AsvCase:
    """Prepare the case of `params`, or skip it (asv's SkipNotImplemented) with a recorded reason."""
    case, device = Case.from_params(*params), default_device()
    reason = skip_reason(case, device)
    if reason:
        record(case, kind, "skipped", reason)
        raise SkipNotImplemented(reason)
    try:
        return AsvCase(PreparedCase(case, device, measure_memory=measure_memory), kind)
    except Unsupported as refused:
        record(case, kind, "skipped", refused.reason)
        raise SkipNotImplemented(refused.reason) from refused
    except Exception as error:
        record(case, kind, "failed", describe(error))
        raise


@functools.lru_cache(maxsize=None)
def timed_case(*params) -> AsvCase:
    return open_case("time", params, measure_memory=False)


def measured_case(*params) -> AsvCase:
    """The prepared case of asv's `params` with its peak memory measured (kind 'memory'). Raises asv's
    SkipNotImplemented, with the recorded reason, for a case skipped here.
    """
    return open_case("memory", params, measure_memory=True)
