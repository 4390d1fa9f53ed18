"""The selection rule on synthetic rows: fastest conformant method wins; failing, unsupported,
unchecked and out-of-memory methods never do; the ratios are the documented ones."""
from __future__ import annotations

from pathlib import Path

import pytest

from persample.report.data import ConformanceRun, read_results
from persample.report.recommend import recommend
from persample.report.verdicts import ConformanceIndex

from .synthetic import bench_row, record, write_results

PEERS = {"opacus-ew", "backpack"}


def index_of(*records: dict, machine: str = "cpu-test-2core", device: str = "cpu") -> ConformanceIndex:
    run = ConformanceRun({"name": machine, "device": device}, "", list(records), Path(f"{machine}.json"))
    return ConformanceIndex({machine: run})


def only_case(rows, index):
    [case] = recommend(rows, index, lambda name: name in PEERS)
    return case


def test_fastest_conformant_method_wins_and_the_ratios_are_right():
    rows = [
        bench_row(method="loop", median_s=1.0),
        bench_row(method="hooks", median_s=0.1, baseline_s=0.05, floor_s=0.02, peak_memory_bytes=123),
        bench_row(method="vmap", median_s=0.2),
        bench_row(method="opacus-ew", median_s=0.25),
        bench_row(method="backpack", median_s=0.3),
    ]
    index = index_of(*(record(m, "mlp", "float32") for m in ("loop", "hooks", "vmap", "opacus-ew", "backpack")))
    case = only_case(rows, index)
    assert case.best.row.method == "hooks"
    assert case.best.row.peak_memory_bytes == 123
    assert case.speedup_vs_loop == pytest.approx(10.0)
    assert case.best_peer.row.method == "opacus-ew"
    assert case.speedup_vs_peer == pytest.approx(2.5)
    assert case.overhead == pytest.approx(2.0)
    assert case.roofline_fraction == pytest.approx(0.2)
    assert case.ranking() == ["hooks", "vmap", "opacus-ew", "backpack", "loop"]


@pytest.mark.parametrize("outcome", ["fail", "unsupported"])
def test_a_faster_method_that_is_not_conformant_is_never_recommended(outcome):
    rows = [bench_row(method="opacus-ew", median_s=0.01), bench_row(method="hooks", median_s=0.1)]
    index = index_of(record("opacus-ew", "mlp", "float32", outcome=outcome, reason="scaled by B"), record("hooks", "mlp", "float32"))
    case = only_case(rows, index)
    assert case.best.row.method == "hooks"
    [excluded] = case.excluded
    assert excluded.row.method == "opacus-ew" and "scaled by B" in excluded.exclusion
    assert excluded.exclusion_kind == {"fail": "fails conformance", "unsupported": "unsupported in conformance"}[outcome]
    assert case.best_peer is None and case.speedup_vs_peer is None


def test_out_of_memory_failed_skipped_and_unchecked_runs_are_never_recommended():
    rows = [
        bench_row(method="vmap", status="failed", reason="CUDA out of memory. Tried to allocate 2 GiB", median_s=None),
        bench_row(method="expand", status="failed", reason="RuntimeError: boom", median_s=0.001),
        bench_row(method="backpack", status="skipped", reason="not installed", median_s=None),
        bench_row(method="kernel", median_s=0.002),  # fast, but no conformance record
        bench_row(method="hooks", median_s=0.1),
    ]
    index = index_of(*(record(m, "mlp", "float32") for m in ("vmap", "expand", "backpack", "hooks")))
    case = only_case(rows, index)
    assert case.best.row.method == "hooks"
    kinds = {e.row.method: e.exclusion_kind for e in case.excluded}
    assert kinds == {"vmap": "out of memory", "expand": "failed", "backpack": "skipped", "kernel": "no conformance record"}
    reasons = {e.row.method: e.exclusion for e in case.excluded}
    assert "Tried to allocate 2 GiB" in reasons["vmap"]
    assert reasons["expand"] == "failed: RuntimeError: boom" and reasons["backpack"] == "skipped: not installed"
    assert case.loop is None and case.speedup_vs_loop is None


def test_no_eligible_method_means_no_recommendation_and_no_ratios():
    case = only_case([bench_row(method="vmap", median_s=0.1)], index_of(record("vmap", "mlp", "float32", outcome="fail")))
    assert case.best is None
    assert (case.speedup_vs_loop, case.speedup_vs_peer, case.overhead, case.roofline_fraction) == (None,) * 4
    assert case.ranking() == []


def test_a_captured_variant_counts_as_its_method_with_a_cuda_graph_label():
    gpu = {"machine": "h100-80gb", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}
    rows = [bench_row(method="vmap", median_s=0.3, **gpu), bench_row(method="vmap", variant="captured", median_s=0.1, **gpu),
            bench_row(method="hooks", median_s=0.2, **gpu), bench_row(method="loop", median_s=2.0, **gpu),
            bench_row(method="loop", variant="captured", median_s=1.0, **gpu)]
    index = index_of(*(record(m, "mlp", "float32", "cuda") for m in ("vmap", "hooks", "loop")), machine="h100-80gb", device="cuda")
    case = only_case(rows, index)
    assert case.best.row.label == "vmap + CUDA graph"
    assert case.speedup_vs_loop == pytest.approx(20.0)  # against the eager loop
    assert case.ranking() == ["vmap", "hooks", "loop"]


def test_a_machine_without_conformance_borrows_its_device_types_most_severe_verdict():
    h100 = ConformanceRun({"name": "h100", "device": "cuda"}, "", [record("vmap", "mlp", "float32", "cuda")], Path("h100.json"))
    a100 = ConformanceRun({"name": "a100", "device": "cuda"}, "", [record("vmap", "mlp", "float32", "cuda", outcome="fail")], Path("a100.json"))
    cpu = ConformanceRun({"name": "cpu", "device": "cpu"}, "", [record("hooks", "mlp", "float32")], Path("cpu.json"))
    index = ConformanceIndex({"h100": h100, "a100": a100, "cpu": cpu})
    verdict = index.verdict("h200", "cuda", "vmap", "mlp", "float32")
    assert verdict.outcome == "fail" and verdict.borrowed and verdict.machine == "a100"
    assert index.verdict("h100", "cuda", "vmap", "mlp", "float32").passed
    assert index.verdict("h200", "cuda", "hooks", "mlp", "float32").outcome == "missing"
    assert index.source_for("h200", "cuda") == ["a100", "h100"]


def test_results_csv_keeps_the_latest_row_per_key_and_reads_empty_cells_as_missing(tmp_path):
    path = write_results(tmp_path / "results.csv", [
        {"machine": "m", "device": "cpu", "workload": "mlp", "batch_size": 8, "dtype": "float32", "method": "hooks",
         "variant": "eager", "status": "ok", "median_s": 0.5, "date": "2026-01-01"},
        {"machine": "m", "device": "cpu", "workload": "mlp", "batch_size": 8, "dtype": "float32", "method": "hooks",
         "variant": "eager", "status": "ok", "median_s": 0.25, "date": "2026-02-01"},
    ])
    [row] = read_results(path)
    assert row.median_s == 0.25 and row.floor_s is None and row.peak_memory_bytes is None
