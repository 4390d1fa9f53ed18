"""The conformance matrix as library code: cells, running one cell, the gate, records.

The pytest suite in `conformance/` only parametrizes over `cells()`, runs `run_cell()` and asserts
what `gate.verdict()` says.
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
