"""The conformance matrix of one machine: per dtype, a cell per method × workload with its outcome,
measured error over tolerance, and the reason or error message."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..modes import display_key
from .data import ConformanceRun

SYMBOLS = {"pass": "✓", "fail": "✗", "unsupported": "–", "error": "!", "reference": "="}
"""✓ right; ✗ wrong or crashed; – refused (with the reason); ! LossNotPerSample (the loss depends on
the batch: the expected answer); = the float64 loop, the reference itself."""


def dtype_key(dtype: str) -> tuple[int, str]:
    """Sort key for a mode or dtype name: the order of `persample.modes.MODES` (the usual training
    modes first, float64 last), unknown names after them."""
    return display_key(dtype)


def error_ratio(record: dict) -> float | None:
    """The larger of relative error / its tolerance and per-sample error / its tolerance."""
    tolerance = record.get("tolerance") or {}
    ratios = [
        record[measure] / tolerance[limit]
        for measure, limit in (("relative_error", "relative"), ("per_sample_error", "per_sample"))
        if record.get(measure) is not None and tolerance.get(limit)
    ]
    return max(ratios) if ratios else None


@dataclass(frozen=True)
class MatrixCell:
    """One (method, workload, dtype) conformance result."""

    record: dict

    @property
    def outcome(self) -> str:
        """The record's outcome: pass, fail, unsupported, error or reference."""
        return self.record["outcome"]

    @property
    def ratio(self) -> float | None:
        """The measured error over its tolerance (the larger of relative and per-sample), or None."""
        return error_ratio(self.record)

    @property
    def symbol(self) -> str:
        """The outcome's symbol, with '*' for a known deviation (verdict xfail)."""
        mark = SYMBOLS.get(self.outcome, "?")
        return mark + ("*" if self.record.get("verdict") == "xfail" else "")

    def details(self) -> str:
        """Every number and message of the record, one per line."""
        r = self.record
        tolerance = r.get("tolerance") or {}
        lines = [f"{r['id']}: {self.outcome}" + (" (peer)" if r.get("peer") else "")]
        if r.get("relative_error") is not None:
            lines.append(f"relative error {r['relative_error']:.3g} (tolerance {tolerance.get('relative', float('nan')):g})")
        if r.get("per_sample_error") is not None:
            lines.append(f"per-sample error {r['per_sample_error']:.3g} (tolerance {tolerance.get('per_sample', float('nan')):g})")
        if r.get("worst_parameter") is not None:
            lines.append(f"worst: parameter {r['worst_parameter']}, sample {r.get('worst_sample')}")
        if r.get("reason"):
            lines.append(str(r["reason"]))
        if r.get("assumption"):
            lines.append(f"assumption: {r['assumption']}")
        if r.get("expected"):
            lines.append(f"expected: {r['expected']}")
        if r.get("verdict") == "xfail":
            lines.append("a known deviation (known_deviations.toml)")
        return "\n".join(lines)


@dataclass
class Matrix:
    """One machine's conformance results in one dtype."""

    machine: str
    dtype: str
    methods: list[str]
    workloads: list[str]
    cells: dict[tuple[str, str], MatrixCell] = field(default_factory=dict)

    def cell(self, method: str, workload: str) -> MatrixCell | None:
        """The cell of `method` on `workload`, or None where none ran."""
        return self.cells.get((method, workload))

    def counts(self) -> dict[str, int]:
        """How many cells have each outcome (pass, fail and unsupported always present)."""
        counts = {"pass": 0, "fail": 0, "unsupported": 0}
        for cell in self.cells.values():
            counts[cell.outcome] = counts.get(cell.outcome, 0) + 1
        return counts


def _ordered(names: set[str], preferred: list[str]) -> list[str]:
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def matrices(run: ConformanceRun, method_order: list[str], workload_order: list[str]) -> list[Matrix]:
    """One matrix per dtype present in `run`, in the usual dtype order."""
    methods = _ordered({r["method"] for r in run.records}, method_order)
    workloads = _ordered({r["workload"] for r in run.records}, workload_order)
    by_dtype: dict[str, Matrix] = {}
    for record in run.records:
        dtype = record["dtype"]
        matrix = by_dtype.setdefault(dtype, Matrix(run.name, dtype, methods, workloads))
        matrix.cells[(record["method"], record["workload"])] = MatrixCell(record)
    return [by_dtype[d] for d in sorted(by_dtype, key=dtype_key)]


def findings(run: ConformanceRun) -> list[MatrixCell]:
    """Every failing cell, peers first: where a method (or a peer library) deviates."""
    failing = [MatrixCell(r) for r in run.records if r["outcome"] == "fail"]
    return sorted(failing, key=lambda c: (not c.record.get("peer"), c.record["method"], c.record["id"]))
