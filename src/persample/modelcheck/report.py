"""What `persample check` found: per method and dtype, the verdict against the reference and the
invariants, and time and peak memory per batch size; ranked, printed, and written as JSON."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..modes import mode_name
from ..report.format import DASH, bytes_text, error_text, ratio_text, seconds_text
from .judge import CORRECT, FAILED, REFUSED, UNAVAILABLE, UNJUDGED, WRONG
from .measure import Measurement

SCHEMA = "persample.check/1"
ORDER = {CORRECT: 0, UNJUDGED: 1, WRONG: 2, FAILED: 3, REFUSED: 4, UNAVAILABLE: 5}
FAIL_ON = {"ours": ("ours", "plugin"), "any": ("ours", "plugin", "peer")}
"""Whose wrong or failed results make the exit code non-zero: our methods and the methods the user
named (`ours`, the default), or also the peers' (`any`, for a maintainer's CI)."""


@dataclass
class MethodResult:
    """One method in one dtype. `kind`: "ours", "peer" (Opacus, BackPACK, torch's ExpandedWeights)
    or "plugin" (given by the user). Errors are relative (see `persample.reference.compare`)."""

    method: str
    kind: str
    dtype: str
    status: str
    reason: str = ""
    max_relative: float | None = None
    max_per_sample: float | None = None
    tolerance_relative: float | None = None
    tolerance_per_sample: float | None = None
    invariants: dict[str, str | None] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    untimed: str = ""
    measurements: list[Measurement] = field(default_factory=list)

    def at(self, batch_size: int) -> Measurement | None:
        """The measurement at `batch_size`, or None."""
        return next((m for m in self.measurements if m.batch_size == batch_size), None)


@dataclass
class CheckReport:
    """The whole check of one model on one machine."""

    model: str
    parameters: int
    structure: str
    device: str
    machine: str
    hardware: str
    batch_size: int
    batch_sizes: list[int]
    dtypes: list[str]
    references: dict[str, str]
    baseline: dict[str, list[Measurement]]
    results: list[MethodResult]
    auto: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quick: bool = False
    created: str = ""
    seconds: float = 0.0
    schema: str = SCHEMA

    @property
    def ranked_at(self) -> int:
        """The batch size methods are ranked at: the user's, else the measured one nearest to it."""
        if self.batch_size in self.batch_sizes or not self.batch_sizes:
            return self.batch_size
        return min(self.batch_sizes, key=lambda b: (abs(math.log(b / self.batch_size)), b))

    def baseline_at(self, dtype: str, batch_size: int) -> Measurement | None:
        """The baseline's (plain training's) measurement in `dtype` at `batch_size`, or None."""
        return next((m for m in self.baseline.get(dtype, []) if m.batch_size == batch_size), None)

    def ratio(self, result: MethodResult, batch_size: int) -> float | None:
        """Time per step over one ordinary forward and backward of the mean loss (same batch)."""
        own, base = result.at(batch_size), self.baseline_at(result.dtype, batch_size)
        if own is None or base is None or own.median_s is None or not base.median_s:
            return None
        return own.median_s / base.median_s

    def ranked(self, dtype: str | torch.dtype) -> list[MethodResult]:
        """Correct methods fastest first at `ranked_at` (untimed ones after), then unjudged, wrong,
        failed, refused and unavailable ones. Raises `ValueError` for a dtype not checked."""
        dtype = mode_name(dtype) if isinstance(dtype, torch.dtype) else dtype
        if dtype not in self.dtypes:
            raise ValueError(f"{dtype!r} was not checked; checked: {', '.join(self.dtypes)}")

        def key(result: MethodResult):
            own = result.at(self.ranked_at)
            time = own.median_s if own is not None and own.median_s is not None else float("inf")
            return ORDER[result.status], time, result.method
        return sorted((r for r in self.results if r.dtype == dtype), key=key)

    def fastest(self, dtype: str, batch_size: int) -> list[str]:
        """Correct methods measured at `batch_size`, fastest first (what `auto` learns)."""
        timed = [(r.at(batch_size).median_s, r.method) for r in self.results
                 if r.dtype == dtype and r.status == CORRECT and r.at(batch_size) and r.at(batch_size).median_s]
        return [name for _, name in sorted(timed)]

    def failures(self, fail_on: str = "ours") -> list[MethodResult]:
        """Wrong or failed results of the methods `fail_on` covers (see `FAIL_ON`)."""
        kinds = FAIL_ON[fail_on]
        return [r for r in self.results if r.kind in kinds and r.status in (WRONG, FAILED)]

    def exit_code(self, fail_on: str = "ours") -> int:
        """1 when `failures(fail_on)` is not empty, else 0."""
        return 1 if self.failures(fail_on) else 0

    def to_dict(self) -> dict:
        """The report as plain data (what `write_json` writes; `from_dict` reads it back)."""
        return asdict(self)

    def write_json(self, path: Path) -> Path:
        """Write the report as JSON to `path` (creating its directory); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> CheckReport:
        """The report of a check.json's contents. Raises `ValueError` for another schema."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a check record of schema {SCHEMA!r} (found {data.get('schema')!r})")
        measurements = lambda items: [Measurement(**m) for m in items]  # noqa: E731
        results = [MethodResult(**{**r, "measurements": measurements(r["measurements"])}) for r in data["results"]]
        baseline = {dtype: measurements(items) for dtype, items in data["baseline"].items()}
        return cls(**{**data, "results": results, "baseline": baseline})

    @classmethod
    def read(cls, path: Path) -> CheckReport:
        """The report stored at `path` (a check.json). Raises `ValueError` for another schema."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def table(self, width: int = 120) -> str:
        """The ranked table per dtype, as the terminal shows it."""
        lines = [f"persample check: {self.model} ({self.parameters:,} trainable parameters), batch {self.batch_size}, "
                 f"on {self.machine} ({self.hardware})"]
        for dtype in self.dtypes:
            lines += ["", f"{dtype} — reference: {self.references.get(dtype, DASH)}"]
            lines += _dtype_table(self, dtype, width)
            if dtype in self.auto:
                lines.append(f"auto now picks: {self.auto[dtype]}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _dtype_table(report: CheckReport, dtype: str, width: int) -> list[str]:
    sizes = report.batch_sizes
    header = ["#", "method", "kind", "verdict", "error (rel / worst sample)",
              *(f"B={b}" for b in sizes), f"× backward (B={report.ranked_at})", f"peak memory (B={report.ranked_at})"]
    rows = [header]
    notes = []
    rank = 0
    for result in report.ranked(dtype):
        if result.status == CORRECT:
            rank += 1
        error = (f"{error_text(result.max_relative)} / {error_text(result.max_per_sample)}"
                 if result.max_relative is not None else DASH)
        own = result.at(report.ranked_at)
        times = [_time_cell(result.at(b)) for b in sizes]
        rows.append([str(rank) if result.status == CORRECT else "", result.method, result.kind,
                     result.status.upper() if result.status in (WRONG, FAILED) else result.status, error, *times,
                     ratio_text(report.ratio(result, report.ranked_at)),
                     bytes_text(own.peak_bytes) if own is not None else DASH])
        why = result.reason or result.untimed or _skips(result)
        if why:
            notes.append(f"  {result.method}: {why}")
    base = [_time_cell(report.baseline_at(dtype, b)) for b in sizes]
    own = report.baseline_at(dtype, report.ranked_at)
    rows.append(["", "backward (baseline)", "", "", "", *base, "1×", bytes_text(own.peak_bytes) if own else DASH])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return text + [_clip(note, width) for note in notes]


def _time_cell(measurement: Measurement | None) -> str:
    if measurement is None or measurement.median_s is None:
        return "skipped" if measurement is not None and measurement.skipped else DASH
    spread = measurement.spread_s
    return seconds_text(measurement.median_s) + (f" ±{seconds_text(spread)}" if spread else "")


def _skips(result: MethodResult) -> str:
    skipped = [f"B={m.batch_size} skipped ({m.skipped})" for m in result.measurements if m.skipped]
    return "; ".join(skipped)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width * 3 else text[: width * 3 - 1] + "…"
