"""Reading the report's inputs: `results.csv` (benchmarks) and `conformance/<machine>.json`.

Missing or unreadable inputs never raise: they are listed in `ReportData.missing` so the page can
say what is absent.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..conformance.records import SCHEMA as CONFORMANCE_SCHEMA

CAPTURED = "captured"


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


@dataclass(frozen=True)
class BenchRow:
    """One row of `results.csv`: one method timed on one case of one machine."""

    machine: str
    device: str
    gpu: str
    workload: str
    size: str
    batch_size: int
    dtype: str
    method: str
    variant: str
    status: str
    reason: str
    median_s: float | None
    spread_s: float | None
    peak_memory_bytes: int | None
    baseline_s: float | None
    baseline_memory_bytes: int | None
    floor_s: float | None
    floor_bytes: int | None
    floor_flops: float | None
    source: str
    commit: str
    date: str

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> "BenchRow":
        text = {key: (row.get(key) or "").strip() for key in row}
        return cls(
            machine=text["machine"], device=text.get("device", ""), gpu=text.get("gpu", ""),
            workload=text["workload"], size=text.get("size", ""),
            batch_size=_integer(text["batch_size"]) or 0, dtype=text["dtype"],
            method=text["method"], variant=text.get("variant") or "eager",
            status=text.get("status") or "ok", reason=text.get("reason", ""),
            median_s=_number(text.get("median_s")), spread_s=_number(text.get("spread_s")),
            peak_memory_bytes=_integer(text.get("peak_memory_bytes")),
            baseline_s=_number(text.get("baseline_s")),
            baseline_memory_bytes=_integer(text.get("baseline_memory_bytes")),
            floor_s=_number(text.get("floor_s")), floor_bytes=_integer(text.get("floor_bytes")),
            floor_flops=_number(text.get("floor_flops")), source=text.get("source", ""),
            commit=text.get("commit", ""), date=text.get("date", ""),
        )

    @property
    def captured(self) -> bool:
        return self.variant == CAPTURED

    @property
    def label(self) -> str:
        """The method as the report names it; a captured variant is the method "+ CUDA graph"."""
        return f"{self.method} + CUDA graph" if self.captured else self.method

    @property
    def out_of_memory(self) -> bool:
        return self.status == "failed" and "out of memory" in self.reason.lower()

    @property
    def timed(self) -> bool:
        return self.status == "ok" and self.median_s is not None and self.median_s > 0


@dataclass
class ConformanceRun:
    """One machine's conformance results file."""

    machine: dict
    created: str
    records: list[dict]
    path: Path

    @property
    def name(self) -> str:
        return self.machine.get("name") or self.path.stem

    @property
    def device(self) -> str:
        return self.machine.get("device") or (self.records[0]["device"] if self.records else "cpu")


@dataclass
class ReportData:
    """Everything the report is built from, and what was missing or unreadable."""

    rows: list[BenchRow] = field(default_factory=list)
    conformance: dict[str, ConformanceRun] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    results_csv: Path | None = None
    asv_index: Path | None = None


def read_results(path: Path) -> list[BenchRow]:
    """Rows of `results.csv`; of rows repeating a key, the one with the latest date wins."""
    with path.open(newline="") as handle:
        rows = [BenchRow.from_csv(row) for row in csv.DictReader(handle)]
    latest: dict[tuple, BenchRow] = {}
    for row in sorted(rows, key=lambda r: r.date):
        key = (row.machine, row.gpu, row.workload, row.size, row.batch_size, row.dtype, row.method, row.variant)
        latest[key] = row
    return list(latest.values())


def read_conformance(path: Path) -> ConformanceRun:
    """One conformance results file; raises ValueError if it is not of the expected schema."""
    payload = json.loads(path.read_text())
    if payload.get("schema") != CONFORMANCE_SCHEMA:
        raise ValueError(f"schema {payload.get('schema')!r}, expected {CONFORMANCE_SCHEMA!r}")
    return ConformanceRun(payload.get("machine") or {}, payload.get("created", ""), list(payload["records"]), path)


def load(reports_dir: Path) -> ReportData:
    """Read whatever of the inputs exists under `reports_dir`."""
    data = ReportData()
    results = reports_dir / "results.csv"
    if results.is_file():
        try:
            data.rows = read_results(results)
            data.results_csv = results
        except (OSError, KeyError, csv.Error) as error:
            data.missing.append(f"{results} could not be read ({type(error).__name__}: {error}); no benchmark results shown.")
    else:
        data.missing.append(f"No benchmark results: {results} does not exist yet (run the benchmarks, then `persample collect`).")
    files = sorted((reports_dir / "conformance").glob("*.json"))
    for path in files:
        try:
            run = read_conformance(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            data.missing.append(f"{path} was skipped ({type(error).__name__}: {error}).")
            continue
        data.conformance[run.name] = run
    if not data.conformance:
        data.missing.append(
            f"No conformance results in {reports_dir / 'conformance'}: no method can be recommended "
            "until the conformance suite has run (`pytest conformance`)."
        )
    asv_index = reports_dir / "asv" / "html" / "index.html"
    data.asv_index = asv_index if asv_index.is_file() else None
    return data
