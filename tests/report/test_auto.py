"""`method="auto"`: the report's recommendation for the nearest measured case, else the fallback rule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
from persample import selection
from persample.report import summary
from persample.report.build import build_report
from persample.report.signature import nearest, signature_of, workload_signature
from persample.workloads import get_workload

from .synthetic import CPU, bench_row, record, reports_directory, write_conformance, write_results

CPU_DEVICE = torch.device("cpu")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))


@pytest.fixture
def no_packaged_summary(monkeypatch, tmp_path):
    monkeypatch.setattr(summary, "PACKAGED", tmp_path / "absent.json")


@pytest.fixture
def measured(monkeypatch, tmp_path, no_packaged_summary):
    reports = reports_directory(tmp_path)
    monkeypatch.setenv(summary.ENV_VAR, str(reports))
    return reports


@pytest.mark.parametrize("batch, expected", [(8, "vmap"), (10, "vmap"), (200, "hooks"), (4096, "hooks"), (None, "vmap")])
def test_auto_follows_the_nearest_batch_size_of_the_nearest_workload(measured, batch, expected):
    choice = selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=batch)
    assert choice.method.name == expected
    assert choice.basis.startswith("measured") and "mlp (full)" in choice.basis and CPU in choice.basis


def test_a_convolutional_model_follows_the_cnn_and_never_gets_a_non_conformant_method(measured):
    choice = selection.explain_choice(small_cnn(), CPU_DEVICE, torch.float32, batch_size=300)
    assert "mnist_cnn" in choice.basis
    assert choice.method.name == "hooks"  # opacus-ew is faster there but fails conformance


def test_a_ranked_method_that_cannot_run_the_model_is_passed_over(monkeypatch, tmp_path, no_packaged_summary):
    reports = tmp_path / "reports"
    rows = [bench_row(method=m, median_s=t, batch_size=64) for m, t in (("hooks", 0.01), ("vmap", 0.02), ("loop", 0.5))]
    write_results(reports / "results.csv", [vars(r) for r in rows])
    write_conformance(reports, "cpu-test-2core", "cpu", [record(m, "mlp", "float32") for m in ("hooks", "vmap", "loop")])
    monkeypatch.setenv(summary.ENV_VAR, str(reports))
    with_prelu = nn.Sequential(nn.Linear(784, 512), nn.PReLU(), nn.Linear(512, 10))  # hooks has no PReLU rule
    assert selection.choose_method(with_prelu, CPU_DEVICE, torch.float32, batch_size=64).name == "vmap"
    assert selection.choose_method(mlp(), CPU_DEVICE, torch.float32, batch_size=64).name == "hooks"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_fitting_data_auto_falls_back_to_the_documented_rule(monkeypatch, tmp_path, no_packaged_summary, dtype):
    monkeypatch.delenv(summary.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    if dtype == torch.float64:  # data exists, but none in float64
        reports_directory(tmp_path)
    choice = selection.explain_choice(mlp().to(dtype), CPU_DEVICE, dtype, batch_size=8)
    assert choice.basis.startswith("fallback rule for cpu")
    assert choice.method.name == selection.FALLBACK_ORDER["cpu"][0]


def test_the_current_directorys_reports_are_used_when_no_variable_is_set(monkeypatch, tmp_path, no_packaged_summary):
    monkeypatch.delenv(summary.ENV_VAR, raising=False)
    reports_directory(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert selection.choose_method(mlp(), CPU_DEVICE, torch.float32, batch_size=256).name == "hooks"


def test_the_packaged_summary_serves_pip_users(monkeypatch, tmp_path):
    reports = reports_directory(tmp_path / "elsewhere")
    packaged = tmp_path / "recommendations.json"
    build_report(reports, tmp_path / "site" / "index.html", package_summary=packaged)
    monkeypatch.setattr(summary, "PACKAGED", packaged)
    monkeypatch.delenv(summary.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    choice = selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=8)
    assert choice.method.name == "vmap" and str(packaged) in choice.basis


def test_unreadable_data_falls_back_instead_of_failing(monkeypatch, tmp_path, no_packaged_summary):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "results.csv").write_text("not,the,right,columns\n1,2,3,4\n")
    monkeypatch.setenv(summary.ENV_VAR, str(reports))
    assert selection.explain_choice(mlp(), CPU_DEVICE, torch.float32).basis.startswith("fallback")


def test_per_sample_grads_with_auto_runs_on_the_measured_choice(measured):
    model, x, y = mlp(), torch.randn(8, 784), torch.randint(10, (8,))
    grads = persample.per_sample_grads(model, x, y)
    reference = persample.per_sample_grads(model, x, y, method="loop")
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)


def test_tf32_on_cuda_looks_for_tf32_data_then_float32():
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert selection._modes(torch.device("cuda"), torch.float32) == ["tf32", "float32"]
        assert selection._modes(CPU_DEVICE, torch.float32) == ["float32"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def test_signatures_match_layer_types_first_then_size():
    zoo = {name: workload_signature(name, "full") for name in ("mlp", "logreg", "mnist_cnn", "frozen_backbone", "text_classifier")}
    assert nearest(signature_of(small_cnn()), zoo) == "mnist_cnn"
    assert nearest(signature_of(mlp()), zoo) == "mlp"
    assert nearest(signature_of(nn.Linear(20, 3)), zoo) == "logreg"
    small_mlp = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 30))  # ~26k parameters, like the frozen CNN
    assert nearest(signature_of(small_mlp), zoo) != "frozen_backbone"
    frozen = get_workload("frozen_backbone").make_model("full")
    assert nearest(signature_of(frozen), zoo) == "frozen_backbone"
    assert "Conv2d (frozen)" in zoo["frozen_backbone"].layers


def test_the_shipped_summary_is_well_formed():
    shipped = summary.packaged()
    assert shipped["schema"] == summary.SCHEMA and summary.PACKAGED.is_file()
    for machine in shipped["machines"].values():
        assert machine["device"] in ("cpu", "cuda")
        for dtype in machine["cases"]:
            for case in summary.cases(machine, dtype):
                assert case.ranking and case.size in shipped["workloads"][case.workload]
