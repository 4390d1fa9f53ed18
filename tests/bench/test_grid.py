"""The case grid is generated from the registry and the methods' capabilities: a new method joins
every grid, and what it declares (layers, devices, dtypes) decides which of its cases are skipped."""
import re

import pytest
import torch
from torch import nn

from persample.bench import asv_run, skips
from persample.bench.grid import BASELINE, GRID_ENV, GRIDS, Case, current_grid, get_grid
from persample.bench.skips import skip_reason
from persample.methods import registry
from persample.methods.registry import Capabilities, Method
from persample.workloads.registry import HUGGING_FACE, all_workloads

CPU = torch.device("cpu")


class Declared(Method):
    """A method that is only its declaration: the grid and the skips must read nothing else."""

    def __init__(self, **declared) -> None:
        self.capabilities = Capabilities(summary="a declaration under test", **declared)

    def _prepare(self, model, loss_fn, example_batch):
        raise AssertionError("skip decisions must not prepare anything")


@pytest.fixture
def declare(monkeypatch):
    def register(**declared) -> Method:
        method = Declared(**declared)
        monkeypatch.setitem(registry._REGISTRY, method.name, method)
        return method

    return register


def test_every_grid_has_every_registered_method_and_the_baseline(declare):
    """... but `auto`, which times whatever it picks (each of those is in the grid already)."""
    declare(name="linear-only", layers=(nn.Linear,))
    for grid in GRIDS.values():
        methods = grid.params()[3]
        assert methods == [BASELINE, *(n for n in registry.registered() if n != "auto")]
        assert "auto" not in methods
        assert "linear-only" in methods
        assert {case.method for case in grid.cases()} == set(methods)


def test_a_layer_outside_the_declared_vocabulary_skips_the_case(declare):
    declare(name="linear-only", layers=(nn.Linear,))
    assert skip_reason(Case("mlp", "full", 32, "float32", "linear-only"), CPU) is None
    reason = skip_reason(Case("mnist_cnn", "full", 32, "float32", "linear-only"), CPU)
    assert "(Conv2d)" in reason and "outside this method's vocabulary" in reason


def test_declared_devices_and_dtypes_skip_the_case(declare):
    declare(name="gpu-only", devices=frozenset({"cuda"}))
    declare(name="float32-only", dtypes=frozenset({torch.float32}))
    assert skip_reason(Case("mlp", "full", 32, "float32", "gpu-only"), CPU) == "does not run on cpu"
    assert skip_reason(Case("mlp", "full", 32, "bfloat16", "float32-only"), CPU) == "does not offer bfloat16"
    assert skip_reason(Case("mlp", "full", 32, "float32", "float32-only"), CPU) is None


def test_a_missing_package_skips_the_case(declare):
    declare(name="needs-nothing-real", requires=(("no_such_module_xyz", "no-such-package"),))
    reason = skip_reason(Case("mlp", "full", 32, "float32", "needs-nothing-real"), CPU)
    assert "pip install no-such-package" in reason


def test_modes_variants_and_the_loop_cap_skip_with_reasons():
    assert "CUDA" in skip_reason(Case("mlp", "full", 32, "tf32", "vmap"), CPU)
    assert "eagerly only" in skip_reason(Case("mlp", "full", 32, "float32", BASELINE, "captured"), CPU)
    assert "B x the B=1 time" in skip_reason(Case("mlp", "full", 1024, "float32", "loop"), CPU)
    assert skip_reason(Case("mlp", "full", 256, "float32", "loop"), CPU) is None
    if not torch.cuda.is_available():
        assert "CUDA" in skip_reason(Case("mlp", "full", 32, "float32", "vmap", "captured"), CPU)


def test_cases_whose_gradients_cannot_fit_are_skipped(monkeypatch):
    monkeypatch.setattr(skips, "device_memory_bytes", lambda device: 10 * 2**30)
    # 3.09M trainable parameters x 4096 samples x 4 bytes = 47 GiB > 40% of 10 GiB
    reason = skip_reason(Case("text_classifier", "full", 4096, "float32", "vmap"), CPU)
    assert re.search(r"need 47\.\d GiB, more than 40% of this device's 10 GiB", reason)
    assert skip_reason(Case("text_classifier", "full", 256, "float32", "vmap"), CPU) is None
    assert skip_reason(Case("text_classifier", "full", 4096, "float32", BASELINE), CPU) is None


def test_cases_read_as_ids_and_round_trip_through_asv_parameters():
    case = Case("cifar_cnn", "small", 256, "float32", "vmap")
    assert case.id == "vmap-cifar_cnn-small-b256-float32-eager"
    assert case.params() == ("cifar_cnn:small", 256, "float32", "vmap", "eager")
    for case in get_grid("all").cases():
        assert Case.from_params(*case.params()) == case


def test_the_union_grid_covers_every_grid_for_asv_publish():
    everything = set(get_grid("all").cases())
    for grid in GRIDS.values():
        assert set(grid.cases()) <= everything


def test_the_grid_follows_the_device_unless_the_environment_names_one(monkeypatch):
    monkeypatch.setenv(GRID_ENV, "quick")
    assert current_grid().name == "quick"
    monkeypatch.delenv(GRID_ENV)
    assert current_grid().name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_the_cpu_grid_times_every_zoo_workload_at_three_batch_sizes_or_more():
    grid = get_grid("cpu")
    hugging_face = {w.name for w in all_workloads() if HUGGING_FACE in w.tags}
    assert {case.workload for case in grid.cases()} == {
        "mlp", "mnist_cnn", "cifar_cnn", "text_classifier", "transformer_block", "lstm_classifier", "linear_large"} | hugging_face
    assert len(grid.batch_sizes) >= 3 and 256 in grid.batch_sizes and grid.modes == ("float32",)


def test_the_quick_benchmark_shows_how_two_workloads_scale_with_the_batch():
    grid = get_grid("quick")
    batches = {workload: {c.batch_size for c in grid.cases() if c.workload == workload} for workload in grid.workloads}
    assert len(batches) == 2 and all(len(sizes) >= 3 for sizes in batches.values())


def test_the_selection_regex_selects_exactly_the_runnable_cases():
    cases = get_grid("cpu").cases()
    chosen = cases[::3]
    pattern = asv_run.selection_regex(chosen)
    for name in ("per_sample.PerSampleGradientTime.time_step", "per_sample.PerSampleGradientMemory.track_peak_memory"):
        for case in cases:
            asv_name = f"{name}({', '.join(repr(p) for p in case.params())})"  # as asv builds it
            assert bool(re.search(pattern, asv_name)) == (case in chosen)


def test_quick_selection_keeps_the_quick_workloads_and_a_pattern_narrows_it():
    cases = get_grid("cpu").cases()
    quick = asv_run.selected_cases(cases, quick=True, pattern=None)
    assert {c.workload for c in quick} == {"mlp", "mnist_cnn"}
    assert [c.id for c in asv_run.selected_cases(cases, quick=True, pattern="^vmap-mlp-")] == ["vmap-mlp-full-b16-float32-eager"]
