"""Two floors per case: the warm floor (every byte at the bandwidth into memory already touched)
and the fresh-output floor (the per-sample gradients allocated and written as new memory, at the
machine's fresh-write rate). A calibration from before the fresh rate was measured leaves the
fresh-output floor unknown in the table, and is measured again by the next benchmark run."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from persample.bench import calibration as calibration_module
from persample.bench.calibration import Calibration, ensure_calibrated, load_latest
from persample.bench.collect import floor_columns
from persample.bench.floor import Floor, floor_for
from persample.bench.grid import Case


def test_the_fresh_output_floor_writes_the_per_sample_gradients_at_the_fresh_rate():
    floor = Floor(bytes=3_000, flops=1_000, output_bytes=2_000)
    # 2000 bytes at 500 B/s fresh + 1000 at 1000 B/s warm = 5 s, slower than the FLOPs' 1 s
    assert floor.fresh_seconds(bandwidth=1_000, fresh_write=500, throughput=1_000) == 5.0
    assert floor.seconds(bandwidth=1_000, throughput=1_000) == 3.0  # the warm floor: every byte warm
    assert floor.fresh_seconds(bandwidth=1_000, fresh_write=500, throughput=100) == 10.0  # compute-bound
    assert floor.fresh_seconds(bandwidth=1_000, fresh_write=None, throughput=1_000) is None


def test_the_per_sample_gradients_are_the_output_bytes_of_a_case():
    floor = floor_for(Case("linear_large", "full", 4, "float32", "hooks"))
    parameters = 1024 * 1024 + 1024
    assert floor.output_bytes == 4 * parameters * 4
    assert floor.output_bytes < floor.bytes


def calibration(date: str = "2026-01-01T00:00:00+00:00", **fields) -> Calibration:
    return Calibration("cpu-test-2core", "cpu", date, bandwidth=2e10, matmul={"float32": 1e11}, **fields)


def test_the_table_gives_both_floors_and_an_old_calibration_leaves_the_fresh_one_unknown():
    case = Case("mlp", "full", 256, "float32", "hooks")
    floor = floor_for(case)
    observed = SimpleNamespace(case=case)  # floor_columns reads only the observation's case
    columns = floor_columns(observed, calibration(fresh_write=5e9))
    assert columns["floor_s"] == pytest.approx(max(floor.bytes / 2e10, floor.flops / 1e11))
    assert columns["fresh_floor_s"] == pytest.approx(
        max(floor.output_bytes / 5e9 + (floor.bytes - floor.output_bytes) / 2e10, floor.flops / 1e11))
    assert columns["fresh_floor_s"] > columns["floor_s"]
    old = floor_columns(observed, calibration())
    assert old["floor_s"] == columns["floor_s"] and old["fresh_floor_s"] is None


def test_a_record_without_the_fresh_rate_is_read_and_measured_again(tmp_path, monkeypatch):
    machine = tmp_path / "cpu-test-2core"
    machine.mkdir()
    old = {"machine": "cpu-test-2core", "device": "cpu", "date": "2026-01-01T00:00:00+00:00",
           "bandwidth": 2e10, "matmul": {"float32": 1e11}, "versions": {}}  # as stored before the fresh rate
    (machine / "calibration.jsonl").write_text(json.dumps(old) + "\n")
    assert load_latest(tmp_path, "cpu-test-2core").fresh_write is None
    measured = calibration("2026-02-01T00:00:00+00:00", fresh_write=5e9, settings={"THP_MEM_ALLOC_ENABLE": "1"})
    monkeypatch.setattr(calibration_module, "calibrate_as_benchmarks_run", lambda device: measured)
    monkeypatch.setattr(calibration_module, "machine_info", lambda device: {"name": "cpu-test-2core"})
    assert ensure_calibrated(tmp_path, torch.device("cpu")) == measured
    assert load_latest(tmp_path, "cpu-test-2core").fresh_write == 5e9  # stored: the next run reuses it
    assert "unknown" not in measured.describe() and "unknown" in calibration().describe()
