"""Options and fixtures of the conformance suite; results go to reports/conformance/<machine>.json.

    pytest conformance                                   # every registered method, the CI modes
    pytest conformance --mode all                        # every mode this device offers
    pytest conformance --method vmap --workload mlp      # a slice
    pytest conformance --method mylib.plugin:method      # your own method, without forking
    pytest conformance --deviations my_deviations.toml   # your own known deviations, besides ours
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the kernel method's Triton kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from persample.conformance import ReferenceCache, cells, packaged_expectations, write_results  # noqa: E402
from persample.conformance.gate import covering  # noqa: E402
from persample.deviations import load_deviations, packaged_deviations  # noqa: E402
from persample.machine import default_device, machine_info  # noqa: E402
from persample.methods.registry import Method, get, load_object, registered  # noqa: E402
from persample.workloads import all_workloads, get_workload  # noqa: E402

RECORDS: list[dict] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("persample conformance")
    group.addoption("--method", action="append", default=[], metavar="NAME|module:object",
                    help="method to check (repeatable): a registered name, or module:object to "
                         "register your own; default: every registered method")
    group.addoption("--workload", action="append", default=[], help="workload to check (repeatable)")
    group.addoption("--mode", action="append", default=[],
                    help="float64|float32|tf32|bfloat16|float16|autocast-bf16, or 'all' (repeatable); default: "
                         "float32 and one reduced-precision mode per family (the CI profile)")
    group.addoption("--device", default=None, help="cpu or cuda (default: cuda when present)")
    group.addoption("--results", default=None, help="results JSON (default reports/conformance/<machine>.json)")
    group.addoption("--deviations", action="append", default=[], metavar="FILE",
                    help="a known-deviations TOML file of your own, used besides persample's (repeatable)")


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


def deviations_of(config: pytest.Config) -> list:
    return [*packaged_deviations(), *(d for path in config.getoption("deviations") for d in load_deviations(Path(path)))]


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
def deviations(pytestconfig: pytest.Config) -> list:
    return deviations_of(pytestconfig)


@pytest.fixture(scope="session")
def expectations():
    return packaged_expectations()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """The strict gate for invariants: a peer's failure is an expected failure only when a
    deviation entry covers that invariant there; a covered invariant that passes fails."""
    report = yield
    params = getattr(item, "callspec", None) and item.callspec.params
    method = params.get("method") if params else None
    if report.when != "call" or not isinstance(method, Method) or item.get_closest_marker("invariant") is None:
        return report
    check = item.originalname.removeprefix("test_")
    workload = params.get("workload") or getattr(item.function, "workload", "*")
    mode = "float64" if torch.float64 in method.capabilities.dtypes else "float32"
    deviation = covering(deviations_of(item.config), method.name, check, workload, mode, selected_device(item.config))
    if report.failed and deviation is not None and call.excinfo is not None:
        finding = " ".join(call.excinfo.exconly().strip().splitlines()[:3])[:300]
        report.outcome, report.wasxfail = "skipped", f"known deviation ({deviation.source}): {finding}"
    elif report.passed and deviation is not None:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} passes, but {deviation.source} records {method.name} as failing "
                           f"{check} on {workload}: remove the entry now that it no longer happens")
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

    for line in summarize(RECORDS):
        terminalreporter.write_line(line)
    path = getattr(config, "_persample_results_path", None)
    if path:
        terminalreporter.write_line(f"conformance results written to {path}")
