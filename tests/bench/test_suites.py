"""Every asv suite imports, its classes are parametrized by the grid, and asv's own check passes."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persample.bench.grid import PARAM_NAMES, current_grid

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "suites").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"suites_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        assert cls.param_names == PARAM_NAMES and cls.params == current_grid().params()
        measured = [name for name in vars(cls) if name.startswith(("time_", "track_"))]
        assert measured, f"{cls.__name__} measures nothing"
        if any(name.startswith("track_") for name in measured):
            assert cls.unit == "bytes"


def test_asv_check_finds_no_problems(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout
