"""The conformance verdict for a benchmarked method: its record on the same machine, or else on a
machine of the same device type (the most severe outcome wins when several such machines disagree).
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import BenchRow, ConformanceRun

SEVERITY = {"pass": 0, "reference": 0, "unsupported": 1, "error": 1, "fail": 2}


@dataclass(frozen=True)
class Verdict:
    """The outcome that decides whether a method may be recommended for one case."""

    outcome: str  # "pass" | "fail" | "unsupported" | "missing"
    record: dict | None = None
    machine: str | None = None  # the machine whose conformance record this is
    borrowed: bool = False  # True when taken from another machine of the same device type

    @property
    def passed(self) -> bool:
        """Whether the cell passed (or is the reference)."""
        return self.outcome in ("pass", "reference")

    def describe(self) -> str:
        """One line for tables and hover text."""
        if self.record is None:
            return "no conformance record"
        where = f" (on {self.machine})" if self.borrowed else ""
        reason = self.record.get("reason")
        if self.outcome == "reference":
            return f"the reference itself{where} (the float64 loop)"
        if self.outcome == "pass":
            error = self.record.get("relative_error")
            tolerance = (self.record.get("tolerance") or {}).get("relative")
            if error is not None and tolerance:
                return f"passes conformance{where}: relative error {error:.3g} ≤ {tolerance:g}"
            return f"passes conformance{where}"
        verb = "fails conformance" if self.outcome == "fail" else "unsupported in conformance"
        return f"{verb}{where}: {reason}" if reason else f"{verb}{where}"


class ConformanceIndex:
    """Looks up conformance records by (machine, method, workload, dtype)."""

    def __init__(self, runs: dict[str, ConformanceRun]) -> None:
        self.devices = {name: run.device for name, run in runs.items()}
        self.records: dict[tuple[str, str, str, str], dict] = {}
        self.peers: set[str] = set()
        for name, run in runs.items():
            for record in run.records:
                self.records[(name, record["method"], record["workload"], record["dtype"])] = record
                if record.get("peer"):
                    self.peers.add(record["method"])

    def verdict(self, machine: str, device: str, method: str, workload: str, dtype: str) -> Verdict:
        """The record for this machine if it has conformance results, else the same device type's."""
        if machine in self.devices:
            record = self.records.get((machine, method, workload, dtype))
            return Verdict(record["outcome"], record, machine) if record else Verdict("missing")
        found = [
            (name, self.records[(name, method, workload, dtype)])
            for name, kind in sorted(self.devices.items())
            if kind == device and (name, method, workload, dtype) in self.records
        ]
        if not found:
            return Verdict("missing")
        name, record = max(found, key=lambda item: SEVERITY.get(item[1]["outcome"], 2))
        return Verdict(record["outcome"], record, name, borrowed=True)

    def verdict_for(self, row: BenchRow) -> Verdict:
        """The verdict for a benchmark row's machine, method, workload and dtype."""
        return self.verdict(row.machine, row.device, row.method, row.workload, row.dtype)

    def source_for(self, machine: str, device: str) -> list[str]:
        """Machines whose conformance records stand for `machine`'s (itself, or its device type's)."""
        if machine in self.devices:
            return [machine]
        return sorted(name for name, kind in self.devices.items() if kind == device)
