"""The expected outcome of every (method, adversarial workload) cell, from a committed table.

`expected_outcomes.toml` has one table per adversarial workload and one key per method:
"right", "refused:<assumption id>" or "error:LossNotPerSample"; a key "method@mode" overrides
the outcome in one mode. A cell whose outcome differs fails, so a method that refuses what it
can do fails as surely as one that is wrong.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..assumptions import get_assumption

PACKAGED = Path(__file__).with_name("expected_outcomes.toml")
KINDS = ("right", "refused", "error")


@dataclass(frozen=True)
class Expected:
    """What a method must do on a workload: be right ('right'), refuse naming an assumption ('refused:<id>') or
    raise ('error:<ErrorClass>').
    """

    kind: str  # "right" | "refused" | "error"
    detail: str | None = None  # the assumption id, or the error's class name

    @classmethod
    def parse(cls, text: str, where: str) -> Expected:
        """The `Expected` written as `text` in expected_outcomes.toml. Raises `ValueError` (naming `where`) for
        another form or an unknown assumption id.
        """
        kind, _, detail = text.partition(":")
        if kind not in KINDS or (kind != "right" and not detail):
            raise ValueError(f"{where}: {text!r} is not 'right', 'refused:<assumption>' or 'error:<Error>'")
        if kind == "refused":
            get_assumption(detail)
        return cls(kind, detail or None)

    def __str__(self) -> str:
        return self.kind + (f":{self.detail}" if self.detail else "")

    def matches(self, outcome: str, assumption: str | None, error: str | None) -> bool:
        """Whether a record's outcome (pass/fail/unsupported/error/reference) is this one."""
        if self.kind == "right":
            return outcome in ("pass", "reference")
        if self.kind == "refused":
            return outcome == "unsupported" and assumption == self.detail
        return outcome == "error" and error == self.detail


@dataclass(frozen=True)
class Expectations:
    """expected_outcomes.toml as a table: {workload: {'<method>' or '<method>@<mode>': Expected}}."""

    table: dict[str, dict[str, Expected]]

    def get(self, method: str, workload: str, mode: str) -> Expected | None:
        """What `method` must do on `workload` in `mode`: the mode's own entry, else the method's, else None."""
        row = self.table.get(workload, {})
        return row.get(f"{method}@{mode}") or row.get(method)

    def methods(self) -> set[str]:
        """Every method name the table mentions."""
        return {key.partition("@")[0] for row in self.table.values() for key in row}


def load_expectations(path: Path = PACKAGED) -> Expectations:
    """The expectations table of `path` (default: the packaged expected_outcomes.toml). Raises `ValueError` for
    an entry of an unknown form.
    """
    raw = tomllib.loads(Path(path).read_text())
    return Expectations({
        workload: {key: Expected.parse(value, f"{path} [{workload}] {key}") for key, value in row.items()}
        for workload, row in raw.items()
    })


@lru_cache(maxsize=1)
def packaged_expectations() -> Expectations:
    return load_expectations(PACKAGED)
