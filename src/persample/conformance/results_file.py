"""The records of a conformance run, gathered as its cells report, written to the results file
at the end and summed up in the terminal. Runs in the controlling process (not in xdist workers,
whose reports, with their records, reach the controller)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ..machine import machine_info
from . import choices
from .records import write_results
from .summary import summarize

PROPERTY = "conformance"  # the user property under which a cell's test reports its record


class ResultsFile:
    """A pytest plugin object: one per run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict] = []
        self.path: Path | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = dict(report.user_properties).get(PROPERTY)
        if record is not None and report.when == "call":
            self.records.append(record)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.records:
            return
        machine = machine_info(choices.device(self.config))
        self.path = write_results(self.records, choices.results_path(self.config, machine["name"]), machine)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.records:
            return
        for line in summarize(self.records):
            terminalreporter.write_line(line)
        if self.path is not None:
            terminalreporter.write_line(f"conformance results written to {self.path}")
