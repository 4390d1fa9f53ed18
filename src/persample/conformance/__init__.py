"""The conformance matrix as library code: cells, running one cell, records and known deviations.

The pytest suite in `conformance/` only parametrizes over `cells()` and asserts on `run_cell()`.
"""
from .cells import Cell, cells, modes_for
from .check import ReferenceCache, run_cell
from .records import Record, write_results
from .deviations import load_known_deviations

__all__ = ["Cell", "Record", "ReferenceCache", "cells", "load_known_deviations", "modes_for", "run_cell", "write_results"]
