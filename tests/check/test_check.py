"""`persample check` on models outside the zoo: every method judged against the float64 loop and
the invariants, correct ones timed; wrong methods reported wrong, with the check that caught them,
and the exit code set; the user's model left as found; the ranking kept for `auto`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import persample
from persample.cli import main
from persample.conformance.snapshot import ModelSnapshot
from persample.modelcheck import CheckReport
from persample.modelcheck.judge import CORRECT, FAILED, REFUSED, WRONG
from persample.selection import explain_choice

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import own_models  # noqa: E402

from . import wrong_methods  # noqa: E402

pytestmark = pytest.mark.xdist_group("check")

# What each model must show: methods that must be correct, and methods that must refuse it.
EXPECTED = {
    "make_cnn": ({"loop", "hooks", "expand", "vmap", "jax", "opacus-hooks", "torch-ew"}, {"backpack"}),
    "make_transformer": ({"loop", "vmap", "hooks"}, {"opacus-hooks", "backpack"}),  # a bare nn.Parameter, nn.MultiheadAttention
    "make_gru": ({"loop", "jax", "opacus-ew", "torch-ew", "hooks"}, {"vmap", "opacus-hooks"}),  # nn.GRU
}


def by_method(report: CheckReport, dtype: str = "float32") -> dict:
    return {r.method: r for r in report.results if r.dtype == dtype}


@pytest.mark.parametrize("factory", sorted(EXPECTED))
def test_every_method_on_a_model_outside_the_zoo_is_right_or_refuses(factory):
    model, inputs, targets = getattr(own_models, factory)()
    before = ModelSnapshot.of(model)
    report = persample.check(model, inputs, targets, quick=True)
    results = by_method(report)
    must_be_correct, must_refuse = EXPECTED[factory]
    assert {m for m in must_be_correct if results[m].status != CORRECT} == set(), {m: results[m].reason for m in must_be_correct}
    assert {m for m in must_refuse if results[m].status != REFUSED} == set()
    for result in results.values():
        if result.kind == "ours":
            assert result.status not in (WRONG, FAILED), f"{result.method}: {result.reason}"
        if result.status == REFUSED:
            assert result.method in result.reason and "layer" in result.reason  # names the layer and the reason
        if result.status == CORRECT:
            assert result.max_relative <= result.tolerance_relative
            assert set(result.invariants) == {"sum", "batch_of_one", "independence", "model_intact"}
            assert all(v is None for v in result.invariants.values())
            timed = result.at(report.batch_size)
            assert (timed is None) == bool(result.untimed)  # timed unless its time would mislead (kernel interpreted)
            if timed is not None:
                assert timed.median_s > 0 and timed.samples == 3 and timed.peak_bytes is not None
    assert report.exit_code() == 0
    assert before.differences(model) == []
    # the ranking: correct methods first, fastest first
    ranked = [r for r in report.ranked("float32") if r.status == CORRECT and r.at(report.batch_size)]
    times = [r.at(report.batch_size).median_s for r in ranked]
    assert times == sorted(times)


@pytest.mark.parametrize("wrong, caught_by", [
    (wrong_methods.MeanGradient(), "sum"),
    (wrong_methods.Leaky(), "independence"),
    (wrong_methods.LeavesHooks(), "model_intact"),
])
def test_a_wrong_method_is_reported_wrong_naming_the_check_that_caught_it(wrong, caught_by):
    model, inputs, targets = own_models.make_cnn()
    before = ModelSnapshot.of(model)
    report = persample.check(model, inputs, targets, methods=["loop", wrong], quick=True, record=False)
    result = by_method(report)[wrong.name]
    assert result.status == WRONG and result.kind == "plugin"
    assert result.invariants[caught_by] is not None
    assert result.at(report.batch_size) is None  # a wrong method is not timed
    assert report.exit_code() == 1 and [r.method for r in report.failures()] == [wrong.name]
    assert by_method(report)["loop"].status == CORRECT
    assert before.differences(model) == []  # put back after the method that changed it


def test_the_mean_gradient_is_named_as_such():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=[wrong_methods.MeanGradient()], quick=True, record=False)
    reason = by_method(report)["mean-gradient"].reason
    assert "the gradient of the mean loss?" in reason and "0.125×" in reason  # 1/B, B = 8


def test_a_wrong_peer_sets_the_exit_code_only_when_asked():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=[wrong_methods.WrongPeer()], quick=True, record=False)
    assert by_method(report)["wrong-peer"].status == WRONG
    assert report.exit_code("ours") == 0 and report.exit_code("any") == 1


def test_the_command_prints_the_table_writes_json_and_html_and_exits_1_on_a_wrong_method(tmp_path, capsys):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom tests.check.wrong_methods import Leaky\n")
    out = tmp_path / "out"
    code = main(["check", str(ROOT / "examples/own_models.py") + ":make_cnn", "--only", "loop,vmap",
                 "--method", f"{plugin}:Leaky", "--quick", "--out", str(out), "--no-record"])
    printed = capsys.readouterr()
    assert code == 1
    assert "WRONG" in printed.out and "leaky" in printed.out and "auto now picks" in printed.out
    assert printed.out.startswith("persample check: cnn (1,525 trainable parameters), batch 8")
    assert "[3/3] float32 leaky" in printed.err  # progress, on stderr
    record = json.loads((out / "check.json").read_text())
    assert record["schema"] == "persample.check/1"
    assert {r["method"]: r["status"] for r in record["results"]} == {"loop": CORRECT, "vmap": CORRECT, "leaky": WRONG}
    page = (out / "index.html").read_text()
    assert "leaky" in page and 'data-figure="time-float32"' in page and (out / "assets" / "plotly.min.js").is_file()
    assert "https://" not in page.split("<main>")[0]  # offline: no script or style from the network


def test_the_command_exits_0_when_every_method_is_right(tmp_path):
    code = main(["check", str(ROOT / "examples/own_models.py") + ":make_gru", "--only", "loop,jax",
                 "--quick", "--out", str(tmp_path), "--no-html", "--no-record"])
    assert code == 0 and (tmp_path / "check.json").is_file() and not (tmp_path / "index.html").exists()


def test_batch_sizes_are_resampled_from_the_users_rows_and_each_method_timed_at_each():
    model, inputs, targets = own_models.make_transformer(batch=8)
    report = persample.check(model, inputs, targets, methods=["loop", "vmap"], record=False)
    assert report.batch_sizes == [2, 8, 32]  # B/4, B, 4B
    for result in report.results:
        assert [m.batch_size for m in result.measurements] == [2, 8, 32]
        assert all(m.median_s and m.samples >= 5 and m.q1_s <= m.median_s <= m.q3_s for m in result.measurements)
    assert [m.batch_size for m in report.baseline["float32"]] == [2, 8, 32]


def test_a_checked_ranking_feeds_auto_for_models_of_the_same_structure():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, quick=True)  # every method: a ranking auto may use
    fastest = report.fastest("float32", 8)
    other, inputs2, targets2 = own_models.make_gru()  # same structure, other weights
    choice = explain_choice(other, torch.device("cpu"), torch.float32, 8, example_batch=(inputs2, targets2))
    assert choice.method.name == fastest[0]
    assert choice.basis.startswith("checked: `persample check` measured this model's structure at batch 8")
    assert report.auto["float32"].startswith(fastest[0])
    wider = own_models.GRUClassifier(classes=7)  # another structure: not this ranking
    choice = explain_choice(wider, torch.device("cpu"), torch.float32, 8, example_batch=(inputs2, torch.randint(7, (8,))))
    assert not choice.basis.startswith("checked")


def test_a_check_of_some_methods_does_not_steer_auto():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=["loop"], quick=True)
    assert any("not kept for method='auto'" in note for note in report.notes)
    choice = explain_choice(model, torch.device("cpu"), torch.float32, 8, example_batch=(inputs, targets))
    assert not choice.basis.startswith("checked")


def test_the_json_record_reads_back():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=["loop"], quick=True, record=False)
    assert CheckReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


class NeedsFloat32(nn.Module):
    """A forward that insists on float32 (as custom kernels do): no float64 copy is possible."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        if x.dtype != torch.float32:
            raise TypeError(f"this layer only takes float32, got {x.dtype}")
        return self.linear(x)


def test_without_a_float64_copy_the_loop_in_the_models_dtype_is_the_reference_and_the_report_says_so():
    torch.manual_seed(0)
    report = persample.check(NeedsFloat32(), torch.randn(6, 4), torch.randint(3, (6,)), methods=["loop", "vmap", "hooks"],
                             quick=True, record=False)
    assert report.references["float32"].startswith("loop in float32 (the float64 copy failed: TypeError: this layer only takes float32")
    assert {r.method: r.status for r in report.results} == {"loop": CORRECT, "vmap": CORRECT, "hooks": CORRECT}


def test_a_random_forward_is_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        persample.check(model, torch.randn(6, 4), torch.randint(3, (6,)), methods=["loop"], quick=True)


def test_bad_input_names_the_problem():
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="batch first with 6 rows"):
        persample.check(model, torch.randn(6, 4), torch.randint(3, (5,)))
    with pytest.raises(ValueError, match="unknown floating dtype"):
        persample.check(model, torch.randn(6, 4), torch.randint(3, (6,)), dtypes=["int8"])
    assert main(["check", "builtins:dict"]) == 2  # the check could not run: 2, not 1 (a method is wrong)


def test_a_model_that_couples_samples_is_named_and_its_alone_gradients_judged_without_the_sum():
    class Centred(nn.Module):  # a batch statistic, not BatchNorm: h - h.mean(0)
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.tanh(h - h.mean(0)))

    torch.manual_seed(0)
    report = persample.check(Centred(), torch.randn(6, 5), torch.randint(3, (6,)),
                             methods=["loop", "hooks", "vmap", "jax", "torch-ew"], quick=True, record=False)
    results = by_method(report)
    assert any("couples the samples" in note for note in report.notes)
    for name in ("loop", "vmap", "jax"):  # each sample alone: the definition
        assert results[name].status == CORRECT and "sum" in results[name].unchecked
    assert results["hooks"].status == REFUSED  # its rules read row i as sample i's
    assert results["torch-ew"].status == WRONG  # a peer's batch-row answer, not sample i alone
    assert report.exit_code() == 0


def test_a_method_returning_an_earlier_batchs_answer_is_wrong():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=["loop", wrong_methods.Stale()], quick=True, record=False)
    result = by_method(report)["stale"]
    assert result.status == WRONG and "did not get sample 0's gradient" in result.invariants["independence"]


def test_a_method_leaving_out_a_parameter_with_a_small_gradient_is_wrong():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods=[wrong_methods.ZeroesSmallest()], quick=True, record=False)
    result = by_method(report)["zeroes-smallest"]
    assert result.status == WRONG and "exactly zero" in result.reason


def test_a_method_writing_into_its_inputs_is_wrong_and_harms_no_other():
    model, inputs, targets = own_models.make_cnn()
    given = inputs.clone()
    report = persample.check(model, inputs, targets, methods=[wrong_methods.WritesInputs(), "loop", "vmap"], quick=True,
                             record=False)
    results = by_method(report)
    assert results["writes-inputs"].status == WRONG and "wrote into the batch" in results["writes-inputs"].reason
    assert results["loop"].status == CORRECT and results["vmap"].status == CORRECT
    assert torch.equal(inputs, given)


def test_under_no_grad_the_check_runs_as_everywhere_else():
    model, inputs, targets = own_models.make_gru()
    with torch.no_grad():
        report = persample.check(model, inputs, targets, methods=["loop", "jax"], quick=True, record=False)
    assert {r.status for r in report.results} == {CORRECT}


def test_a_forward_updating_its_buffers_is_checked_and_left_as_found():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.linear(x)

    torch.manual_seed(0)
    model = Counting()
    report = persample.check(model, torch.randn(6, 4), torch.randint(3, (6,)), methods=["loop", "hooks", "vmap"],
                             quick=True, record=False)
    assert {r.status for r in report.results} == {CORRECT}, [r.reason for r in report.results]
    assert model.calls.item() == 0


def test_arguments_take_one_value_or_many():
    model, inputs, targets = own_models.make_gru()
    report = persample.check(model, inputs, targets, methods="loop", dtypes="float32", batch_sizes=4, record=False, quick=True)
    assert [r.method for r in report.results] == ["loop"] and report.batch_sizes == [4]
    assert report.ranked_at == 4 and report.ranked(torch.float32)[0].at(4).median_s
    with pytest.raises(ValueError, match="positive integers"):
        persample.check(model, inputs, targets, batch_sizes=[2.5])
    with pytest.raises(ValueError, match="no methods to check"):
        persample.check(model, inputs, targets, methods=[])
    with pytest.raises(ValueError, match="NaN or inf"):
        persample.check(model, inputs.clone().fill_(float("nan")), targets)


class GradientOnlyCoupling(nn.Module):
    """Rows 6 and 7 exchange gradient, the values unchanged: no sample's loss moves when another changes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        s = h[6:8].sum(0, keepdim=True)
        return self.b(torch.cat([h[:6], h[6:8] + (s - s.detach())]))


class BatchSized(nn.Module):
    """Scales by x.shape[0]: a sample computes otherwise in the batch than alone."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * x.shape[0])


@pytest.mark.parametrize("make", [GradientOnlyCoupling, BatchSized], ids=["gradient-only", "batch-size"])
def test_a_coupling_no_loss_value_shows_never_makes_the_reference_wrong(make):
    torch.manual_seed(0)
    report = persample.check(make(), torch.randn(8, 6), torch.randint(3, (8,)),
                             methods=["loop", "hooks", "expand", "vmap"], quick=True, record=False)
    results = by_method(report)
    assert any("does not add up to the batch gradient" in note for note in report.notes)
    for name in ("loop", "vmap"):  # each sample alone: the definition, held to every invariant but the sum
        assert results[name].status == CORRECT and "sum" in results[name].unchecked, results[name].reason
    for name in ("hooks", "expand"):  # they read sample i off the whole batch: refused, naming why
        assert results[name].status == REFUSED and "compute each sample alone" in results[name].reason
    assert report.exit_code() == 0
