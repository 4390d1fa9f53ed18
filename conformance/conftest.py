"""Options and fixtures of the conformance suite; results go to reports/conformance/<machine>.json.

    pytest conformance                                   # every registered method, every cell
    pytest conformance --method vmap --workload mlp      # a slice
    pytest conformance --method mylib.plugin:method      # your own method, without forking
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the kernel method's Triton kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from persample.conformance import ReferenceCache, cells, load_known_deviations, write_results  # noqa: E402
from persample.machine import default_device, machine_info  # noqa: E402
from persample.methods.registry import Method, get, load_object, registered  # noqa: E402
from persample.workloads import all_workloads, get_workload  # noqa: E402

HERE = Path(__file__).parent
KNOWN_DEVIATIONS = HERE / "known_deviations.toml"
RECORDS: list[dict] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("persample conformance")
    group.addoption("--method", action="append", default=[], metavar="NAME|module:object",
                    help="method to check (repeatable): a registered name, or module:object to "
                         "register your own; default: every registered method")
    group.addoption("--workload", action="append", default=[], help="workload to check (repeatable)")
    group.addoption("--mode", action="append", default=[], help="float64|float32|tf32|bfloat16|float16 (repeatable)")
    group.addoption("--device", default=None, help="cpu or cuda (default: cuda when present)")
    group.addoption("--results", default=None, help="results JSON (default reports/conformance/<machine>.json)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one worker")


@functools.cache
def _method(spec: str) -> Method:
    return load_object(spec) if ":" in spec else get(spec)


def selected_methods(config: pytest.Config) -> list[Method]:
    """The --method choices (names or module:object specs), else every registered method."""
    specs = config.getoption("method")
    return [_method(spec) for spec in specs] if specs else list(registered().values())


def selected_workloads(config: pytest.Config) -> list:
    names = config.getoption("workload")
    return [get_workload(n) for n in names] if names else all_workloads()


def selected_device(config: pytest.Config) -> str:
    return config.getoption("device") or default_device().type


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "cell" in metafunc.fixturenames:
        grid = cells(selected_methods(config), selected_workloads(config), selected_device(config),
                     tuple(config.getoption("mode")) or None)
        metafunc.parametrize("cell", [
            pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(c.workload.name)) for c in grid
        ])
    if "method" in metafunc.fixturenames:
        methods = selected_methods(config)
        metafunc.parametrize("method", methods, ids=[m.name for m in methods])


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    return selected_device(pytestconfig)


@pytest.fixture(scope="session")
def references() -> ReferenceCache:
    return ReferenceCache()


@pytest.fixture(scope="session")
def known_deviations() -> dict[str, str]:
    return load_known_deviations(KNOWN_DEVIATIONS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A peer that breaks an invariant is a finding, not a red CI: its failure becomes an xfail
    carrying the assertion (our own methods still fail)."""
    report = yield
    method = getattr(item, "callspec", None) and item.callspec.params.get("method")
    if (report.when == "call" and report.failed and isinstance(method, Method) and method.capabilities.peer
            and item.get_closest_marker("invariant") is not None and call.excinfo is not None):
        finding = call.excinfo.exconly().strip().splitlines()
        report.outcome = "skipped"
        report.wasxfail = f"peer deviation: {' '.join(finding[:3])[:400]}"
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record = dict(report.user_properties).get("conformance")
    if record is not None and report.when == "call":
        RECORDS.append(record)


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not RECORDS or not _is_controller(config):
        return
    machine = machine_info(selected_device(config))
    path = Path(config.getoption("results") or config.rootpath / "reports" / "conformance" / f"{machine['name']}.json")
    write_results(RECORDS, path, machine)
    config._persample_results_path = path  # shown in the terminal summary


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not RECORDS or not _is_controller(config):
        return
    from persample.conformance.summary import summarize

    for line in summarize(RECORDS, load_known_deviations(KNOWN_DEVIATIONS)):
        terminalreporter.write_line(line)
    path = getattr(config, "_persample_results_path", None)
    if path:
        terminalreporter.write_line(f"conformance results written to {path}")
