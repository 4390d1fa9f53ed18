"""One record per conformance cell, and the results file the report reads."""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "persample.conformance/2"


@dataclass
class Record:
    """One conformance cell's outcome as written to reports/conformance/<machine>.json: pass, fail,
    unsupported, error or reference, with the measured relative errors against the tolerance, the
    refusal's reason and assumption, and the gate's verdict.
    """

    id: str
    method: str
    workload: str
    dtype: str
    device: str
    outcome: str  # "pass" | "fail" | "unsupported" | "error" (an expected ValueError) | "reference"
    peer: bool = False
    expected_failure: bool = False
    known_deviation: str | None = None
    relative_error: float | None = None
    per_sample_error: float | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    worst_parameter: str | None = None
    worst_sample: int | None = None
    reason: str | None = None
    assumption: str | None = None  # the failed assumption of a refusal (persample.assumptions)
    declared: bool = False  # a refusal the method declares up front, not one of its checks
    error: str | None = None  # the exception's class name, for "error" and "fail" by exception
    expected: str | None = None  # the outcome the expectations table or a deviation gives
    verdict: str | None = None  # what the gate made of it: pass, fail, xfail, skip
    check_ms: float | None = None  # what the method's checks at prepare cost
    batch_size: int = 0
    size: str = "small"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


def write_results(records: list[dict], path: Path, machine: dict) -> Path:
    """Write (or merge into) the machine's results file; later records replace same-id ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, dict] = {}
    if path.exists():
        try:
            merged = {r["id"]: r for r in json.loads(path.read_text()).get("records", [])}
        except (json.JSONDecodeError, KeyError):
            merged = {}
    merged.update({r["id"]: r for r in records})
    payload = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "records": sorted(merged.values(), key=lambda r: r["id"]),
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
