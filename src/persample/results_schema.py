"""The benchmark results table, `reports/results.csv`: its columns, written once.

`BenchRow` is the schema: its fields, in order, are the table's columns (`COLUMNS`), each field's
`column(...)` says how its text is read back and whether it belongs to the row's key
(`KEY_COLUMNS`). `bench.collect` writes the table in this column order; `report.data` reads it
into `BenchRow`s. Adding a column is one line here (plus, in `bench.collect.row`, the value it
holds).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

CAPTURED = "captured"
REUSE = "reuse"


def _number(text: str) -> float | None:
    """A finite float, or None for empty, unparsable or non-finite text."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: str) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


def _count(text: str) -> int:
    return _integer(text) or 0


def _text(text: str) -> str:
    return text


def _text_or(default: str) -> Callable[[str], str]:
    return lambda text: text or default


def column(parse: Callable[[str], object], *, key: bool = False, required: bool = False):
    """A results-table column: `parse` reads its (stripped) CSV text, `key` puts it in the row's key
    (`KEY_COLUMNS`, in column order), `required` makes a CSV without it unreadable (KeyError)."""
    return field(metadata={"parse": parse, "key": key, "required": required})


@dataclass(frozen=True)
class BenchRow:
    """One row of `results.csv`: one method timed on one case of one machine.

    Times are in seconds (median and interquartile spread of the samples), memory in bytes (peak
    allocated on the device during one step), the floors are the roofline lower bounds of the case
    (`bench.floor`): `floor_s` the warm floor (every byte at the bandwidth into memory already
    touched), `fresh_floor_s` the fresh-output floor (the per-sample gradients allocated and written
    as new memory; empty when the machine's calibration predates that rate), then bytes moved, FLOPs.
    """

    machine: str = column(_text, key=True, required=True)
    device: str = column(_text)
    gpu: str = column(_text, key=True)
    workload: str = column(_text, key=True, required=True)
    size: str = column(_text, key=True)
    batch_size: int = column(_count, key=True, required=True)
    dtype: str = column(_text, key=True, required=True)  # the mode's name (modes.py)
    method: str = column(_text, key=True, required=True)
    variant: str = column(_text_or("eager"), key=True)
    status: str = column(_text_or("ok"))  # ok, skipped, failed
    reason: str = column(_text)
    median_s: float | None = column(_number)
    spread_s: float | None = column(_number)
    peak_memory_bytes: int | None = column(_integer)
    baseline_s: float | None = column(_number)
    baseline_memory_bytes: int | None = column(_integer)
    floor_s: float | None = column(_number)  # the warm floor
    fresh_floor_s: float | None = column(_number)  # the fresh-output floor
    floor_bytes: int | None = column(_integer)
    floor_flops: float | None = column(_number)
    source: str = column(_text)  # asv or pytest-benchmark
    commit: str = column(_text)
    date: str = column(_text)  # ISO 8601, UTC

    @classmethod
    def from_csv(cls, row: dict[str, str | None]) -> BenchRow:
        """The row a `csv.DictReader` read; absent optional columns take their empty value.

        Raises `KeyError` when a required column is absent.
        """
        text = {key: (value or "").strip() for key, value in row.items() if key is not None}
        return cls(**{
            f.name: f.metadata["parse"](text[f.name] if f.metadata["required"] else text.get(f.name, ""))
            for f in fields(cls)
        })

    @property
    def key(self) -> tuple:
        """The values of `KEY_COLUMNS`: one row of the table per key."""
        return tuple(getattr(self, name) for name in KEY_COLUMNS)

    @property
    def captured(self) -> bool:
        """Whether the row times the CUDA-graph captured variant."""
        return self.variant == CAPTURED

    @property
    def label(self) -> str:
        """The method as the report names it; a captured variant is the method "+ CUDA graph", a
        reuse variant the method "+ reused outputs" (its results are overwritten by its next step)."""
        if self.captured:
            return f"{self.method} + CUDA graph"
        return f"{self.method} + reused outputs" if self.variant == REUSE else self.method

    @property
    def out_of_memory(self) -> bool:
        """Whether the case failed by running out of memory."""
        return self.status == "failed" and "out of memory" in self.reason.lower()

    @property
    def timed(self) -> bool:
        """Whether the row has a positive median time (status ok)."""
        return self.status == "ok" and self.median_s is not None and self.median_s > 0


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))
KEY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow) if f.metadata["key"])

__all__ = ["CAPTURED", "COLUMNS", "KEY_COLUMNS", "BenchRow", "column"]
