"""The benchmarks, defined once: which cases exist (`grid`), why some are skipped (`skips`), how
each is prepared and measured (`prepared`, `timing`, `memory`), its roofline floor (`floor`,
`calibration`), and the tidy table of all machines' results (`collect`). The asv suites (`suites/`)
and the pytest-benchmark quick run (`tests/bench/`) are thin wrappers over it; docs/benchmarks.md.

    >>> from persample.bench import Case, PreparedCase
    >>> case = PreparedCase(Case("mlp", "small", 8, "float32", "vmap"))
    >>> case.run()                                  # one synchronised per-sample-gradient step

For the main job, `run_quick_benchmark()` times the "quick" grid on this machine (about a minute
on a CPU) and returns the pytest-benchmark JSON that `persample collect` reads.
"""
from .grid import BASELINE, Case, Grid, current_grid, get_grid
from .prepared import PreparedCase
from .quick import run_quick_benchmark

__all__ = ["BASELINE", "Case", "Grid", "PreparedCase", "current_grid", "get_grid", "run_quick_benchmark"]
