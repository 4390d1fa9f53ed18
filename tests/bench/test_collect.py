"""`persample collect` on hand-written asv results and pytest-benchmark JSON: numbers, NaN (skipped,
or not run) and null (failed) become ok/skipped/failed rows with reasons, the baseline fills its
columns, the floor comes from the machine's calibration, and the report can read the table."""
import argparse
import csv
import itertools
import json

import pytest

from persample.bench.calibration import Calibration
from persample.bench.collect import COLUMNS, collect
from persample.bench.commands import add_commands
from persample.bench.floor import floor_for
from persample.bench.grid import Case
from persample.report.data import read_results

NAN = float("nan")
COMMIT = "abcdef1234567890abcdef1234567890abcdef12"
METHODS = ["baseline", "vmap", "hooks", "loop", "expand"]
COLUMNS_ASV = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
               "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]


def asv_entry(values, q25=None, q75=None, started_at=1_790_000_000_000):
    params = [["'mlp'"], ["256"], ["'float32'"], [repr(m) for m in METHODS], ["'eager'"]]
    n = len(values)
    return [values, params, "v1", started_at, 10.0, [None] * n, [None] * n, q25 or [None] * n, q75 or [None] * n,
            [1] * n, [5] * n]


def outcome(method, kind, status, reason):
    case = Case("mlp", "full", 256, "float32", method)
    return json.dumps({**case.__dict__, "kind": kind, "status": status, "reason": reason, "commit": COMMIT,
                       "date": "2026-01-01T00:00:00+00:00"})


@pytest.fixture
def asv_results(tmp_path):
    machine = tmp_path / "results" / "h100-80gb"
    machine.mkdir(parents=True)
    (machine / "machine.json").write_text(json.dumps(
        {"machine": "h100-80gb", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "version": 1}))
    result = {
        "commit_hash": COMMIT, "env_name": "existing", "date": 1_780_000_000_000, "params": {"machine": "h100-80gb"},
        "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": COLUMNS_ASV, "version": 2,
        "results": {
            # baseline, vmap, hooks (skipped), loop (failed), expand (not selected in this run)
            "per_sample.PerSampleGradientTime.time_step": asv_entry(
                [0.1, 0.5, NAN, None, NAN], q25=[0.09, 0.45, None, None, None], q75=[0.12, 0.6, None, None, None]),
            "per_sample.PerSampleGradientMemory.track_peak_memory": asv_entry([1_000, 5_000, NAN, None, NAN]),
        },
    }
    (machine / f"{COMMIT[:8]}-existing.json").write_text(json.dumps(result))  # NaN as asv writes it
    (machine / "outcomes.jsonl").write_text("\n".join([
        outcome("hooks", "time", "skipped", "layer x has no per-layer rule"),
        outcome("loop", "time", "failed", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"),
    ]) + "\n")
    calibration = Calibration("h100-80gb", "cuda", "2026-01-01T00:00:00+00:00", bandwidth=3e12,
                              matmul={"float32": 5e13})
    (machine / "calibration.jsonl").write_text(json.dumps(calibration.__dict__) + "\n")
    return tmp_path / "results"


def by_method(table):
    return {row["method"]: row for row in table}


def test_asv_values_become_ok_skipped_and_failed_rows(asv_results, tmp_path):
    table = by_method(collect(asv_results, [], tmp_path / "results.csv"))
    assert set(table) == {"vmap", "hooks", "loop"}  # no baseline row; expand did not run
    vmap = table["vmap"]
    assert (vmap["status"], vmap["median_s"], vmap["peak_memory_bytes"]) == ("ok", 0.5, 5_000)
    assert vmap["spread_s"] == pytest.approx(0.15)
    assert (vmap["baseline_s"], vmap["baseline_memory_bytes"]) == (0.1, 1_000)
    assert (vmap["machine"], vmap["device"], vmap["gpu"]) == ("h100-80gb", "cuda", "NVIDIA H100 80GB HBM3")
    assert (vmap["source"], vmap["commit"]) == ("asv", COMMIT)
    assert (table["hooks"]["status"], table["hooks"]["reason"]) == ("skipped", "layer x has no per-layer rule")
    assert table["hooks"]["median_s"] is None
    assert table["loop"]["status"] == "failed" and "out of memory" in table["loop"]["reason"]


def test_the_floor_uses_the_machines_calibration(asv_results, tmp_path):
    vmap = by_method(collect(asv_results, [], tmp_path / "results.csv"))["vmap"]
    floor = floor_for(Case("mlp", "full", 256, "float32", "vmap"))
    assert (vmap["floor_bytes"], vmap["floor_flops"]) == (floor.bytes, floor.flops)
    assert vmap["floor_s"] == max(floor.bytes / 3e12, floor.flops / 5e13)


def test_the_table_has_the_agreed_columns_and_the_report_reads_it(asv_results, tmp_path):
    out = tmp_path / "results.csv"
    collect(asv_results, [], out)
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = {row.method: row for row in read_results(out)}
    assert rows["vmap"].timed and rows["vmap"].baseline_s == 0.1
    assert rows["loop"].out_of_memory and rows["hooks"].status == "skipped"


def pytest_benchmark_json(path, date, medians, not_run=()):
    identity = {"name": "h100-80gb", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "calibration": None}
    benchmarks = [
        {"name": f"test[{method}]", "extra_info": {**Case("mlp", "full", 256, "float32", method).__dict__,
                                                   "peak_memory_bytes": 7_000},
         "stats": {"median": median, "iqr": 0.01}}
        for method, median in medians.items()
    ]
    path.write_text(json.dumps({
        "machine_info": {"persample": identity}, "commit_info": {"id": "f" * 40}, "datetime": date,
        "benchmarks": benchmarks, "persample_not_run": list(not_run)}))
    return path


def test_a_later_pytest_benchmark_run_replaces_an_older_asv_row(asv_results, tmp_path):
    quick = pytest_benchmark_json(tmp_path / "quick.json", "2027-01-01T00:00:00+00:00", {"vmap": 0.4, "baseline": 0.2})
    table = by_method(collect(asv_results, [quick], tmp_path / "results.csv"))
    assert (table["vmap"]["source"], table["vmap"]["median_s"], table["vmap"]["baseline_s"]) == (
        "pytest-benchmark", 0.4, 0.2)
    assert table["hooks"]["source"] == "asv"


def test_pytest_benchmark_skips_keep_their_reasons(tmp_path):
    skipped = {"case": Case("mlp", "full", 256, "float32", "kernel").__dict__, "status": "skipped",
               "reason": "no CUDA device"}
    quick = pytest_benchmark_json(tmp_path / "quick.json", "2027-01-01T00:00:00+00:00", {"vmap": 0.4}, [skipped])
    table = by_method(collect(tmp_path / "absent", [quick], tmp_path / "results.csv"))
    assert (table["kernel"]["status"], table["kernel"]["reason"]) == ("skipped", "no CUDA device")
    assert table["vmap"]["baseline_s"] is None and table["vmap"]["floor_s"] is None  # no baseline, no calibration


def test_every_combination_of_statuses_is_read_back(asv_results, tmp_path):
    table = collect(asv_results, [], tmp_path / "results.csv")
    for row, column in itertools.product(table, ("status", "machine", "workload", "dtype", "variant")):
        assert row[column]
    assert {row["status"] for row in table} == {"ok", "skipped", "failed"}


def test_the_collect_command_reads_the_globs_and_reports_the_counts(asv_results, tmp_path, capsys):
    quick = pytest_benchmark_json(tmp_path / "quick.json", "2027-01-01T00:00:00+00:00", {"vmap": 0.4})
    parser = argparse.ArgumentParser(prog="persample")
    add_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "table.csv"
    args = parser.parse_args(["collect", "--asv-results", str(asv_results), "--pytest-json", str(quick),
                              "--out", str(out)])
    assert args.run(args) == 0
    assert "3 rows from 1 machine(s) (h100-80gb); 1 ok, 1 skipped, 1 failed" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 4


def committed_row(**changes):
    """A row of another machine as a committed table holds it (its raw results are not here)."""
    row = {column: "" for column in COLUMNS}
    row.update(machine="cpu-amd-epyc-2core", device="cpu", workload="mlp", size="full", batch_size="32",
               dtype="float32", method="hooks", variant="eager", status="ok", median_s="0.0123",
               source="pytest-benchmark", commit="c" * 40, date="2026-06-01T00:00:00+00:00")
    row.update(changes)
    return row


def write_table(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_rows_of_a_machine_whose_raw_results_are_absent_are_kept(asv_results, tmp_path):
    out = write_table(tmp_path / "results.csv", [committed_row(), committed_row(method="vmap", median_s="0.02")])
    table = collect(asv_results, [], out)
    assert {row["machine"] for row in table} == {"cpu-amd-epyc-2core", "h100-80gb"}
    kept = {row.method: row for row in read_results(out) if row.machine == "cpu-amd-epyc-2core"}
    assert set(kept) == {"hooks", "vmap"} and kept["hooks"].median_s == 0.0123


def test_a_newer_run_replaces_the_kept_row_of_its_case_and_an_older_one_does_not(tmp_path):
    newer = pytest_benchmark_json(tmp_path / "quick.json", "2027-01-01T00:00:00+00:00", {"vmap": 0.4})
    kept = committed_row(machine="h100-80gb", device="cuda", gpu="NVIDIA H100 80GB HBM3", batch_size="256",
                         method="vmap", median_s="0.9", date="2026-06-01T00:00:00+00:00")
    out = write_table(tmp_path / "results.csv", [kept])
    assert [row["median_s"] for row in collect(tmp_path / "absent", [newer], out)] == [0.4]
    out = write_table(tmp_path / "results.csv", [{**kept, "date": "2028-01-01T00:00:00+00:00"}])
    assert [row["median_s"] for row in collect(tmp_path / "absent", [newer], out)] == ["0.9"]


def test_collecting_twice_changes_nothing(asv_results, tmp_path):
    out = tmp_path / "results.csv"
    collect(asv_results, [], out)
    first = out.read_text()
    collect(asv_results, [], out)
    assert out.read_text() == first
