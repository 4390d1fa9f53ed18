"""Reading the report's inputs: `results.csv` (benchmarks) and `conformance/<machine>.json`.

Missing or unreadable inputs never raise: they are listed in `ReportData.missing` so the page can
say what is absent.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..conformance.records import SCHEMA as CONFORMANCE_SCHEMA
from ..results_schema import BenchRow  # the results table's one definition


@dataclass
class ConformanceRun:
    """One machine's conformance results file."""

    machine: dict
    created: str
    records: list[dict]
    path: Path

    @property
    def name(self) -> str:
        """The machine's name from the file, else the file's stem."""
        return self.machine.get("name") or self.path.stem

    @property
    def device(self) -> str:
        """The machine's device type from the file, else the first record's, else 'cpu'."""
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
    """Rows of `results.csv` (schema: `results_schema.BenchRow`); of rows repeating a key
    (`results_schema.KEY_COLUMNS`), the one with the latest date wins. Raises `KeyError` when a
    required column is absent, `OSError` when the file cannot be read."""
    with path.open(newline="") as handle:
        rows = [BenchRow.from_csv(row) for row in csv.DictReader(handle)]
    latest: dict[tuple, BenchRow] = {}
    for row in sorted(rows, key=lambda r: r.date):
        latest[row.key] = row
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
