"""Every asv suite imports, its classes are parametrized by the grid, and asv's own check passes."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persample.bench.asv_suite import asv_params
from persample.bench.grid import GRID_ENV, default_grid_name
from persample.methods.registry import registered
from persample.modes import MODES
from persample.workloads import BENCH, QUICK, all_workloads

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "suites").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"suites_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What each grid times, written here independently of `persample.bench.grid`: the tag that puts a
# workload in it, whether the workload runs at its `cpu_size`, the batch sizes, the device type whose
# benchmarked modes it times, and the variants.
GRID_SPECS = {
    "gpu": (BENCH, False, [32, 256, 1024, 4096], "cuda", ["eager", "captured"]),
    "cpu": (BENCH, True, [16, 64, 256], "cpu", ["eager"]),
    "quick": (QUICK, False, [4, 16, 64], "cpu", ["eager"]),
}


def expected_params(grid: str) -> tuple[list[list], list[str]]:
    """asv's (params, param_names) for `grid`, from the workload and method registries and the modes."""
    tag, cpu_sizes, batch_sizes, device, variants = GRID_SPECS[grid]
    workloads = [
        w.name if not cpu_sizes or w.cpu_size == "full" else f"{w.name}:{w.cpu_size}"
        for w in all_workloads() if tag in w.tags
    ]
    modes = [name for name, mode in MODES.items() if device in mode.benchmarked]
    methods = ["baseline", *(name for name, method in registered().items() if not method.capabilities.chooser)]
    return [workloads, batch_sizes, modes, methods, variants], ["workload", "batch_size", "dtype", "method", "variant"]


def benchmark_classes(module) -> list[type]:
    return [obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == module.__name__]


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_suite_imports(path):
    module = load(path)
    assert module.__doc__


@pytest.mark.parametrize("path", [p for p in SUITES if p.stem != "__init__"], ids=lambda p: p.name)
def test_suite_classes_are_parametrized_by_the_grid(path):
    classes = benchmark_classes(load(path))
    assert classes
    for cls in classes:
        assert (cls.params, cls.param_names) == expected_params(default_grid_name())
        measured = [name for name in vars(cls) if name.startswith(("time_", "track_"))]
        assert measured, f"{cls.__name__} measures nothing"
        if any(name.startswith("track_") for name in measured):
            assert cls.unit == "bytes"


@pytest.mark.parametrize("grid", GRID_SPECS)
def test_the_suites_parameters_are_the_named_grid(grid, monkeypatch):
    monkeypatch.setenv(GRID_ENV, grid)
    params, names = asv_params()
    assert (params, names) == expected_params(grid)
    assert "mlp" in params[0] and "float32" in params[2] and "hooks" in params[3]


def test_asv_check_finds_no_problems(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout
