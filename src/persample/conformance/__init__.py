"""The conformance matrix as library code: cells, running one cell, the gate, records.

The pytest suite (`suite/`, installed with the package; this repository's `conformance/` collects
it) only parametrizes over `cells()`, runs `run_cell()` and asserts what `gate.verdict()` says. Its
opt-in pytest plugin (`plugin`: options, fixtures, the strict gate for invariants, the results file)
is what `persample conformance` and `pytest -p persample.conformance.plugin` run it with.
"""
from .cells import Cell, cells, modes_for
from .check import ReferenceCache, run_cell
from .expectations import Expectations, load_expectations, packaged_expectations
from .gate import Verdict, verdict
from .records import Record, write_results

__all__ = [
    "Cell", "Expectations", "Record", "ReferenceCache", "Verdict", "cells", "load_expectations", "modes_for",
    "packaged_expectations", "run_cell", "verdict", "write_results",
]
