"""The quick benchmark: the "quick" grid timed by pytest-benchmark (tests/bench/test_quick_bench.py),
for pull requests and the main job; with --benchmark-disable the same cases are a smoke test.

`run_quick_benchmark()` runs it on this machine (under a minute on 2 CPU cores) and writes
`reports/pytest-benchmark/<machine>.json`, which `persample collect` reads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import Unsupported
from ..machine import default_device, machine_info
from ..methods.registry import registered
from .calibration import ensure_calibrated
from .grid import Case, get_grid
from .outcomes import describe
from .prepared import PreparedCase
from .skips import skip_reason
from .timing import threading_env

QUICK_TESTS = Path("tests") / "bench" / "test_quick_bench.py"
# Each case is sampled for a quarter second (at least 3 rounds) instead of pytest-benchmark's
# second (at least 5): 72 cases (2 workloads x 3 batch sizes x 12 methods) fit in a minute on 2 cores.
SAMPLING = ["--benchmark-max-time=0.25", "--benchmark-min-rounds=3"]
NOT_RUN: list[dict] = []  # skipped and failed quick cases of this session, for the JSON


def quick_cases(smoke: bool = False) -> list[Case]:
    """The quick grid's cases; for the smoke test (`smoke`, nothing timed) only those at the
    smallest batch size: every method on every workload once, the rest only matters for timing."""
    grid = get_grid("quick")
    return [case for case in grid.cases() if not smoke or case.batch_size == min(grid.batch_sizes)]


def _not_run(case: Case, status: str, reason: str) -> None:
    NOT_RUN.append({"case": case.__dict__.copy(), "status": status, "reason": reason})


def open_quick_case(case: Case) -> PreparedCase:
    """The prepared case (memory meter running), or a pytest skip (an xfail for a failing peer)."""
    import pytest

    reason = skip_reason(case, default_device())
    if reason:
        _not_run(case, "skipped", reason)
        pytest.skip(reason)
    try:
        return PreparedCase(case, measure_memory=True)
    except Unsupported as refused:
        _not_run(case, "skipped", refused.reason)
        pytest.skip(refused.reason)
    except Exception as error:
        _not_run(case, "failed", describe(error))
        method = registered().get(case.method)
        if method is not None and method.capabilities.peer:
            pytest.xfail(f"peer {case.method} failed: {describe(error)}")
        raise


def pytest_env() -> dict[str, str]:
    """This environment for a pytest child: without xdist's worker variables (pytest-benchmark
    would think it runs in parallel and disable itself), with the benchmark threading settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return {**inherited, **threading_env()}


def run_quick_benchmark(reports_dir: Path | None = None, repo: Path | None = None) -> Path:
    """Run the quick benchmark here; returns the pytest-benchmark JSON `persample collect` reads.

    `repo`: the checkout holding tests/bench (default: the current directory); `reports_dir`:
    default `<repo>/reports`. Calibrates this machine first if it never was (a few seconds).
    """
    repo = Path(repo or Path.cwd())
    reports_dir = Path(reports_dir or repo / "reports")
    tests = repo / QUICK_TESTS
    if not tests.is_file():
        raise FileNotFoundError(f"{tests} not found: run from the persample repository (or pass repo=...)")
    ensure_calibrated(reports_dir / "asv" / "results", default_device())
    out = reports_dir / "pytest-benchmark" / f"{machine_info()['name']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:xdist", *SAMPLING, f"--benchmark-json={out}"]
    subprocess.run(command, cwd=repo, env=pytest_env(), check=True)
    return out
