"""Both harnesses end to end, kept fast: a real `asv run --quick` of two cases through `persample
bench`, collected into the table; the pytest-benchmark quick run, with JSON and as a smoke test."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from persample.bench.calibration import Calibration, FILENAME as CALIBRATION
from persample.bench.collect import collect
from persample.bench.grid import get_grid
from persample.bench.quick import pytest_env
from persample.bench.asv_run import BenchOptions, run_bench
from persample.machine import machine_info

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "tests" / "bench" / "test_quick_bench.py"
QUICK_BATCHES = get_grid("quick").batch_sizes


@pytest.fixture
def asv_config(tmp_path, monkeypatch):
    """The repository's asv.conf.json writing under tmp_path; asv's machine file in a fresh HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = json.loads((ROOT / "asv.conf.json").read_text())
    config.update(repo=str(ROOT), benchmark_dir=str(ROOT / "suites"), results_dir=str(tmp_path / "results"),
                  html_dir=str(tmp_path / "html"), env_dir=str(tmp_path / "env"))
    path = tmp_path / "asv.conf.json"
    path.write_text(json.dumps(config))
    name = machine_info()["name"]
    (tmp_path / "results" / name).mkdir(parents=True)  # a stored calibration: no need to measure here
    stored = Calibration(name, "cpu", "2026-01-01T00:00:00+00:00", bandwidth=1e10, matmul={"float32": 1e11},
                         fresh_write=5e9)
    (tmp_path / "results" / name / CALIBRATION).write_text(json.dumps(stored.__dict__) + "\n")
    return path


@pytest.mark.slow
def test_asv_quick_run_of_one_case_is_saved_and_collected(asv_config, tmp_path):
    options = BenchOptions(quick=True, grid="quick", cases="^(vmap|baseline)-mlp-", config=str(asv_config))
    assert run_bench(ROOT, options) == 0
    table = collect(tmp_path / "results", [], tmp_path / "results.csv")
    assert [(r["method"], r["workload"], r["batch_size"], r["status"]) for r in table] == [("vmap", "mlp", QUICK_BATCHES[0], "ok")]
    row = table[0]
    assert row["median_s"] > 0 and row["peak_memory_bytes"] > 0 and row["baseline_s"] > 0
    assert row["floor_s"] > 0 and row["source"] == "asv" and row["machine"] == machine_info()["name"]
    assert row["fresh_floor_s"] > row["floor_s"]  # the per-sample gradients at 5e9 B/s fresh, 1e10 warm


def run_quick(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", str(QUICK), "-q", "-p", "no:xdist", "-k", "mlp and (vmap or baseline)",
               *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=pytest_env())


def test_quick_benchmark_runs_as_a_smoke_test_with_benchmarks_disabled():
    result = run_quick("--benchmark-disable")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout  # the smallest batch only: a smoke test times nothing


def test_quick_benchmark_json_names_the_machine_and_is_collected(tmp_path):
    out = tmp_path / "quick.json"
    result = run_quick(f"--benchmark-json={out}", "--benchmark-max-time=0.05", "--benchmark-min-rounds=2")
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads(out.read_text())["machine_info"]["persample"]["name"] == machine_info()["name"]
    table = collect(tmp_path / "no-asv-results", [out], tmp_path / "results.csv")
    assert sorted((r["batch_size"], r["method"], r["source"], r["status"]) for r in table) == [
        (batch, "vmap", "pytest-benchmark", "ok") for batch in sorted(QUICK_BATCHES)]
    assert all(row["baseline_s"] > 0 and row["peak_memory_bytes"] > 0 for row in table)
