"""What the asv suites rely on: setup skips cheaply with asv's exception and writes the reason down,
failures are written down too, and asv's machine record carries the GPU identity."""
import json

import pytest
from asv.machine import Machine
from asv_runner.benchmarks.mark import SkipNotImplemented

from persample import Unsupported
from persample.bench import asv_suite
from persample.bench.asv_machine import machine_entry, write_machine_entry
from persample.bench.outcomes import COMMIT_ENV, OUTCOMES_ENV
from persample.methods import registry
from persample.methods.registry import Capabilities, Method


class Refusing(Method):
    capabilities = Capabilities(name="refuses-at-prepare", summary="refuses only when it sees the batch")

    def _prepare(self, model, loss_fn, example_batch):
        raise Unsupported("cannot capture this step", method=self.name)


class Broken(Method):
    capabilities = Capabilities(name="broken", summary="raises while preparing")

    def _prepare(self, model, loss_fn, example_batch):
        raise RuntimeError("boom\nsecond line")


@pytest.fixture
def outcomes(tmp_path, monkeypatch):
    path = tmp_path / "outcomes.jsonl"
    monkeypatch.setenv(OUTCOMES_ENV, str(path))
    monkeypatch.setenv(COMMIT_ENV, "c0ffee")
    for method in (Refusing(), Broken()):
        monkeypatch.setitem(registry._REGISTRY, method.name, method)
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_a_declared_incapacity_skips_before_building_and_is_recorded(outcomes):
    with pytest.raises(SkipNotImplemented, match="batch statistics"):  # BatchNorm in training mode, refused by all
        asv_suite.measured_case("batchnorm_cnn:small", 8, "float32", "hooks", "eager")
    [entry] = outcomes()
    assert (entry["method"], entry["size"], entry["kind"], entry["status"], entry["commit"]) == (
        "hooks", "small", "memory", "skipped", "c0ffee")


def test_a_refusal_at_prepare_is_a_recorded_skip(outcomes):
    with pytest.raises(SkipNotImplemented, match="cannot capture"):
        asv_suite.measured_case("mlp", 4, "float32", "refuses-at-prepare", "eager")
    assert [(e["status"], e["reason"]) for e in outcomes()] == [("skipped", "cannot capture this step")]


def test_an_exception_is_a_recorded_failure_and_reaches_asv(outcomes):
    with pytest.raises(RuntimeError, match="boom"):
        asv_suite.measured_case("mlp", 4, "float32", "broken", "eager")
    assert [(e["status"], e["reason"]) for e in outcomes()] == [("failed", "RuntimeError: boom")]


def test_a_timed_case_is_prepared_once_per_process(outcomes):
    first = asv_suite.timed_case("mlp", 4, "float32", "vmap", "eager")
    assert asv_suite.timed_case("mlp", 4, "float32", "vmap", "eager") is first  # asv re-runs setup per sample
    first.run()


def test_the_machine_record_names_the_machine_and_carries_gpu_and_versions(tmp_path):
    info = {"name": "h100-80gb", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54.15",
            "cuda": "12.8", "gpu_memory_bytes": 85_000_000_000, "compute_capability": "9.0",
            "versions": {"torch": "2.13.0+cu128", "jax": "0.10.2", "jaxlib": "0.10.2", "triton": "3.9.0"}}
    entry = machine_entry(info)
    assert all(isinstance(value, str) for value in entry.values())  # asv turns them into graph paths
    assert write_machine_entry(info, tmp_path / "machines.json") == "h100-80gb"
    loaded = Machine.load(machine_name="h100-80gb", _path=str(tmp_path / "machines.json"))
    assert (loaded.gpu, loaded.driver, loaded.cuda, loaded.torch, loaded.device) == (
        "NVIDIA H100 80GB HBM3", "550.54.15", "12.8", "2.13.0+cu128", "cuda")
