"""The conformance suite as an opt-in pytest plugin, for running it from an installed persample:

    pytest -p persample.conformance.plugin --pyargs persample.conformance.suite \\
        --persample-method mylib.plugin:method --persample-results reports/ -n 2 --dist loadgroup

It is loaded only when asked for (`-p`; it is not a `pytest11` entry point), its options are spelled
`--persample-<name>` (`persample.conformance.options`), and its parametrization and gate touch only
the suite's own tests (`persample.conformance.suite`). It parametrizes the suite over the selected
cells and methods, gives it its fixtures, holds peers' invariants to the known deviations (the
strict gate) and writes the results file (`persample.conformance.results_file`).

This repository's `conformance/conftest.py` imports `__all__` (everything but the options) and
registers the options with their short spellings too.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the kernel method's Triton kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from . import choices  # noqa: E402
from .cells import cells  # noqa: E402
from .check import ReferenceCache  # noqa: E402
from .expectations import Expectations, packaged_expectations  # noqa: E402
from .gate import covering  # noqa: E402
from .options import add_options  # noqa: E402
from .results_file import ResultsFile  # noqa: E402
from ..methods.registry import Method  # noqa: E402

SUITE = "persample.conformance.suite"
MARKERS = (
    "invariant: a property every method must satisfy",
    "xdist_group(name): run these tests on one worker",
)

__all__ = [
    "deviations", "device", "expectations", "pytest_configure", "pytest_generate_tests",
    "pytest_runtest_makereport", "references",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """pytest hook: adds the conformance suite's options (`--persample-method`, ...)."""
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """pytest hook: registers the suite's markers and, in the controlling process, the writer of the results
    file.
    """
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        config.pluginmanager.register(ResultsFile(config), "persample-conformance-results")


def in_suite(function) -> bool:
    """Whether `function` is one of the suite's tests (wherever a test module re-exports it)."""
    return getattr(function, "__module__", "").startswith(SUITE + ".")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`cell`: every selected cell, grouped per workload for xdist; `method`: every selected
    method; `rule_method`: the selected methods that have per-layer rules."""
    if not in_suite(metafunc.function):
        return
    config = metafunc.config
    if "cell" in metafunc.fixturenames:
        grid = cells(choices.methods(config), choices.workloads(config), choices.device(config), choices.modes(config))
        metafunc.parametrize("cell", [
            pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(c.workload.name)) for c in grid
        ])
    if "method" in metafunc.fixturenames:
        metafunc.parametrize("method", [_param(m) for m in choices.methods(config)])
    if "rule_method" in metafunc.fixturenames:
        metafunc.parametrize("rule_method", [_param(m) for m in choices.rule_methods(config)] or [
            pytest.param(None, id="none", marks=pytest.mark.skip(reason="no selected method computes with per-layer rules"))
        ])


def _param(method: Method):
    """The method as a parameter, skipped (saying why) when it cannot run here at all (a missing package)."""
    why = method.unavailable_reason()
    return pytest.param(method, id=method.name, marks=[pytest.mark.skip(reason=f"{method.name}: {why}")] if why else [])


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    return choices.device(pytestconfig)


@pytest.fixture(scope="session")
def references() -> ReferenceCache:
    return ReferenceCache()


@pytest.fixture(scope="session")
def deviations(pytestconfig: pytest.Config) -> list:
    return choices.deviations(pytestconfig)


@pytest.fixture(scope="session")
def expectations() -> Expectations:
    return packaged_expectations()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """The strict gate for invariants: a peer's failure is an expected failure only when a
    deviation entry covers that invariant there; a covered invariant that passes fails."""
    report = yield
    params = getattr(item, "callspec", None) and item.callspec.params
    method = params.get("method") if params else None
    if (report.when != "call" or not isinstance(method, Method) or item.get_closest_marker("invariant") is None
            or not in_suite(getattr(item, "function", None))):
        return report
    check = item.originalname.removeprefix("test_")
    workload = params.get("workload") or getattr(item.function, "workload", "*")
    mode = "float64" if torch.float64 in method.capabilities.dtypes else "float32"
    deviation = covering(choices.deviations(item.config), method.name, check, workload, mode, choices.device(item.config))
    if report.failed and deviation is not None and call.excinfo is not None:
        finding = " ".join(call.excinfo.exconly().strip().splitlines()[:3])[:300]
        report.outcome, report.wasxfail = "skipped", f"known deviation ({deviation.source}): {finding}"
    elif report.passed and deviation is not None:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} passes, but {deviation.source} records {method.name} as failing "
                           f"{check} on {workload}: remove the entry now that it no longer happens")
    return report
