"""A workload is added by one file: a module in the workloads package registers it, the package
finds the module, and the workload reaches the conformance matrix, the benchmark grids (by its
tags, the CPU grid at its `cpu_size`) and the report's summary for auto. A package outside
persample adds one through the `persample.workloads` entry point group."""
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import persample.workloads as workloads_package
from persample.bench.grid import Case, get_grid
from persample.conformance import cells
from persample.methods.registry import get
from persample.recommendations import workload_signature
from persample.report.data import ConformanceRun
from persample.report.recommend import recommend
from persample.report.recommendation_summary import summarize_recommendations
from persample.report.verdicts import ConformanceIndex
from persample.workloads import BENCH, Workload, all_workloads, get_workload, registry
from persample.results_schema import BenchRow

AREA = "zz_extra_area"
NAME = "tiny_extra"
AREA_MODULE = f'''
"""A workload area written for the test: one small dense model."""
import torch
from torch import nn

from persample import losses
from persample.workloads.registry import BENCH, Workload, register_workload


def make_batch(size, batch, generator):
    return torch.randn(batch, 6, generator=generator), torch.randint(3, (batch,), generator=generator)


register_workload(Workload(
    name="{NAME}",
    description="two Linear layers around a Tanh, added by one file",
    make_model=lambda size: nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)),
    make_batch=make_batch,
    loss_fn=losses.cross_entropy,
    tags=frozenset({{"dense", BENCH}}),
    cpu_size="small",
))
'''


def timed(method: str, seconds: float) -> BenchRow:
    """A results-table row: `method` timed on the new workload at size small, B=64, on a CPU."""
    return BenchRow.from_csv({"machine": "cpu-test-2core", "device": "cpu", "workload": NAME, "size": "small",
                              "batch_size": "64", "dtype": "float32", "method": method, "median_s": str(seconds)})


def passed(method: str) -> dict:
    """A conformance record: `method` passed on the new workload in float32 on the CPU."""
    return {"method": method, "workload": NAME, "dtype": "float32", "device": "cpu", "outcome": "pass", "peer": False,
            "size": "small", "batch_size": 8}


@pytest.fixture
def isolated_registry(monkeypatch):
    """The workload registry as it is, restored afterwards (plugins not yet loaded here)."""
    monkeypatch.setattr(registry, "_WORKLOADS", dict(registry._WORKLOADS))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    workload_signature.cache_clear()
    yield
    workload_signature.cache_clear()


@pytest.fixture
def area_file(tmp_path: Path, monkeypatch, isolated_registry) -> Path:
    """A new module file in (a directory of) the workloads package."""
    (tmp_path / f"{AREA}.py").write_text(textwrap.dedent(AREA_MODULE))
    monkeypatch.setattr(workloads_package, "__path__", [*workloads_package.__path__, str(tmp_path)])
    yield tmp_path / f"{AREA}.py"
    sys.modules.pop(f"{workloads_package.__name__}.{AREA}", None)


def test_the_package_finds_a_new_module_and_its_workload(area_file):
    assert NAME not in [w.name for w in all_workloads()]
    assert AREA in workloads_package.discover()
    assert get_workload(NAME).build("small", 4).inputs.shape == (4, 6)


def test_a_discovered_workload_reaches_the_conformance_matrix(area_file):
    workloads_package.discover()
    matrix = cells([get("loop"), get("vmap")], all_workloads(), "cpu")
    assert {cell.method.name for cell in matrix if cell.workload.name == NAME} == {"loop", "vmap"}


def test_a_discovered_workload_reaches_the_benchmark_grids_by_its_tags(area_file):
    workloads_package.discover()
    assert NAME in get_grid("gpu").workloads
    assert f"{NAME}:small" in get_grid("cpu").workloads and NAME not in get_grid("cpu").workloads
    assert NAME not in get_grid("quick").workloads  # not tagged quick
    assert Case(NAME, "small", 16, "float32", "hooks") in get_grid("cpu").cases()
    assert f"{NAME}:small" in get_grid("all").workloads


def test_a_discovered_workload_reaches_the_reports_summary_for_auto(area_file):
    workloads_package.discover()
    rows = [timed("hooks", 0.002), timed("vmap", 0.003)]
    run = ConformanceRun({"name": "cpu-test-2core", "device": "cpu"}, "2026-06-01", [passed("hooks"), passed("vmap")],
                         Path("cpu-test-2core.json"))
    summary = summarize_recommendations(recommend(rows, ConformanceIndex({run.name: run}), lambda name: False),
                                        {run.name: {"device": "cpu"}})
    assert summary["machines"]["cpu-test-2core"]["cases"]["float32"][NAME]["small"]["64"][:2] == ["hooks", "vmap"]
    assert summary["workloads"][NAME]["small"] == workload_signature(NAME, "small").to_json()


def test_an_entry_point_adds_workloads_from_another_package(monkeypatch, isolated_registry):
    mlp = registry._WORKLOADS["mlp"]  # (not get_workload: that would load the plugins before the patch)
    extra = Workload(NAME, "from a plugin", mlp.make_model, mlp.make_batch, mlp.loss_fn, frozenset({"dense", BENCH}))
    entry = SimpleNamespace(name="extra", value="their_package.workloads:EXTRA", load=lambda: [extra])
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [entry] if group == registry.ENTRY_POINT_GROUP else [])
    assert get_workload(NAME) is extra
    assert NAME in get_grid("gpu").workloads
    names = [w.name for w in all_workloads()]
    first_adversarial = next(i for i, w in enumerate(all_workloads()) if "adversarial" in w.tags)
    assert names.index(NAME) < first_adversarial, "the zoo (plugins' included) comes before the adversarial family"


def test_an_entry_point_giving_something_else_is_refused(monkeypatch, isolated_registry):
    entry = SimpleNamespace(name="bad", value="their_package:NUMBER", load=lambda: 42)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [entry])
    with pytest.raises(TypeError, match="not a module, Workload or iterable"):
        all_workloads()
