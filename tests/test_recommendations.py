"""Where `auto`'s measured data comes from and how it is matched: the report's ranking for the
nearest measured case, a ranking `persample check` measured for the same model structure, and a
local measurement before the packaged one; never the current directory by accident."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import persample
from persample import recommendations, selection
from persample.batch import CallArgs
from persample.report.build import build_report
from persample.workloads import get_workload

from .report.synthetic import CPU, bench_row, record, reports_directory, write_conformance, write_results

CPU_DEVICE = torch.device("cpu")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))


@pytest.fixture
def no_packaged_summary(monkeypatch, tmp_path):
    monkeypatch.setattr(recommendations, "PACKAGED", tmp_path / "absent.json")
    monkeypatch.delenv(recommendations.ENV_VAR, raising=False)


def summary_of(reports, tmp_path):
    """The summary the report writes for a reports directory (what a user points auto to)."""
    page = build_report(reports, tmp_path / "site" / "index.html")
    return page.parent / recommendations.FILE_NAME


@pytest.fixture
def measured(monkeypatch, tmp_path, no_packaged_summary):
    summary = summary_of(reports_directory(tmp_path), tmp_path)
    monkeypatch.setenv("PERSAMPLE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv(recommendations.ENV_VAR, str(summary))
    return summary


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
    monkeypatch.setenv(recommendations.ENV_VAR, str(summary_of(reports, tmp_path)))
    reparametrised = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(784, 512)), nn.Linear(512, 10))
    assert selection.choose_method(reparametrised, CPU_DEVICE, torch.float32, batch_size=64).name == "vmap"  # hooks refuses it
    assert selection.choose_method(mlp(), CPU_DEVICE, torch.float32, batch_size=64).name == "hooks"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_fitting_data_auto_falls_back_to_the_documented_rule(monkeypatch, tmp_path, no_packaged_summary, dtype):
    if dtype == torch.float64:  # data exists, but none in float64
        monkeypatch.setenv(recommendations.ENV_VAR, str(summary_of(reports_directory(tmp_path), tmp_path)))
    choice = selection.explain_choice(mlp().to(dtype), CPU_DEVICE, dtype, batch_size=8)
    assert choice.basis.startswith("fallback rule for cpu")
    assert choice.method.name == selection.FALLBACK_ORDER["cpu"][0]


def test_the_current_directory_is_never_read(monkeypatch, tmp_path, no_packaged_summary):
    reports_directory(tmp_path)  # a ./reports with results, as a checkout has
    monkeypatch.chdir(tmp_path)
    assert selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=256).basis.startswith("fallback")


def test_the_packaged_summary_serves_pip_users(monkeypatch, tmp_path):
    packaged = tmp_path / "recommendations.json"
    build_report(reports_directory(tmp_path / "elsewhere"), tmp_path / "site" / "index.html", package_summary=packaged)
    monkeypatch.setattr(recommendations, "PACKAGED", packaged)
    monkeypatch.setenv("PERSAMPLE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(recommendations.ENV_VAR, raising=False)
    choice = selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=8)
    assert choice.method.name == "vmap" and str(packaged) in choice.basis


def test_a_report_built_here_wins_over_the_packaged_summary(monkeypatch, tmp_path):
    """The packaged file says vmap is fastest for the MLP at B=8 on this machine; a report built here
    from newer results (hooks fastest) goes to the local cache, which auto reads after it."""
    monkeypatch.setenv("PERSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(recommendations.ENV_VAR, raising=False)
    packaged = tmp_path / "packaged.json"
    build_report(reports_directory(tmp_path / "old"), tmp_path / "old-site" / "index.html", package_summary=packaged)
    monkeypatch.setattr(recommendations, "PACKAGED", packaged)
    (tmp_path / "cache" / recommendations.FILE_NAME).unlink()
    assert selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=8).method.name == "vmap"
    newer = tmp_path / "new" / "reports"
    rows = [bench_row(method=m, median_s=t, batch_size=8) for m, t in (("hooks", 0.01), ("vmap", 0.02))]
    write_results(newer / "results.csv", [vars(r) for r in rows])
    write_conformance(newer, CPU, "cpu", [record(m, "mlp", "float32") for m in ("hooks", "vmap")])
    build_report(newer, tmp_path / "new-site" / "index.html")
    choice = selection.explain_choice(mlp(), CPU_DEVICE, torch.float32, batch_size=8)
    assert choice.method.name == "hooks" and str(tmp_path / "cache") in choice.basis


def test_a_ranking_measured_by_check_for_the_same_structure_comes_first(monkeypatch, tmp_path, no_packaged_summary):
    monkeypatch.setenv("PERSAMPLE_CACHE", str(tmp_path / "cache"))
    model, x = mlp(), torch.randn(32, 784)
    key = recommendations.structure_key(model, CallArgs.of(x))
    here = selection._this_machine(CPU_DEVICE)
    recommendations.record_checked(key, "an MLP", here, "cpu", "float32", {8: ["expand", "hooks"], 64: ["vmap", "hooks"]})
    choice = selection.explain_choice(model, CPU_DEVICE, torch.float32, 32, example_batch=(x, torch.randint(10, (32,))))
    assert choice.method.name == "vmap" and choice.basis.startswith("checked") and "batch 64" in choice.basis
    other = nn.Sequential(nn.Linear(784, 10))
    assert not selection.explain_choice(other, CPU_DEVICE, torch.float32, 32, example_batch=(x, torch.randint(10, (32,)))).basis.startswith("checked")


def test_unreadable_data_falls_back_instead_of_failing(monkeypatch, tmp_path, no_packaged_summary):
    broken = tmp_path / "recommendations.json"
    broken.write_text("not json")
    monkeypatch.setenv(recommendations.ENV_VAR, str(broken))
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
    zoo = {name: recommendations.workload_signature(name, "full")
           for name in ("mlp", "logreg", "mnist_cnn", "frozen_backbone", "text_classifier")}
    nearest, signature_of = recommendations.nearest, recommendations.signature_of
    assert nearest(signature_of(small_cnn()), zoo) == "mnist_cnn"
    assert nearest(signature_of(mlp()), zoo) == "mlp"
    assert nearest(signature_of(nn.Linear(20, 3)), zoo) == "logreg"
    small_mlp = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 30))  # ~26k parameters, like the frozen CNN
    assert nearest(signature_of(small_mlp), zoo) != "frozen_backbone"
    frozen = get_workload("frozen_backbone").make_model("full")
    assert nearest(signature_of(frozen), zoo) == "frozen_backbone"
    assert "Conv2d (frozen)" in zoo["frozen_backbone"].layers


def test_the_shipped_summary_is_well_formed():
    shipped = recommendations.read(recommendations.PACKAGED)
    assert shipped["schema"] == recommendations.SCHEMA and recommendations.PACKAGED.is_file()
    assert json.loads(recommendations.PACKAGED.read_text())["machines"], "the package ships measured data"
    for machine in shipped["machines"].values():
        assert machine["device"] in ("cpu", "cuda")
        for dtype in machine["cases"]:
            for case in recommendations.cases(machine, dtype):
                assert case.ranking and case.size in shipped["workloads"][case.workload]
