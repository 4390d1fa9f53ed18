"""The records of a conformance run, gathered as its cells report, written to the results file
at the end and summed up in the terminal. Runs in the controlling process (not in xdist workers,
whose reports, with their records, reach the controller)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ..machine import machine_info
from . import choices
from .records import write_results
from .terminal_summary import terminal_summary

PROPERTY = "conformance"  # the user property under which a cell's test reports its record


class ResultsFile:
    """A pytest plugin object: one per run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict] = []
        self.path: Path | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """pytest hook: keep the conformance record a cell's test attached to its call phase."""
        record = dict(report.user_properties).get(PROPERTY)
        if record is not None and report.when == "call":
            self.records.append(record)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """pytest hook: write the session's records to this machine's results file
        (reports/conformance/<machine>.json unless --results says otherwise).
        """
        if not self.records:
            return
        machine = machine_info(choices.device(self.config))
        self.path = write_results(self.records, choices.results_path(self.config, machine["name"]), machine)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        """pytest hook: print the summary of the records and where they were written."""
        if not self.records:
            return
        for line in terminal_summary(self.records):
            terminalreporter.write_line(line)
        if self.path is not None:
            terminalreporter.write_line(f"conformance results written to {self.path}")
