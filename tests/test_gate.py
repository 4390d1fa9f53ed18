"""The conformance gate, as a specification: what each cell's outcome means for the run."""
from __future__ import annotations

import pytest

from persample.conformance import Record, verdict
from persample.conformance.expectations import Expectations, Expected
from persample.deviations import Deviation

EXPECT = Expectations({"time_major_linear": {"hooks": Expected("refused", "batch-first-layers"), "vmap": Expected("right")}})
DEVIATIONS = [Deviation(method="torch-ew", reason="padding row", workloads=("text_classifier",), seen_on_example_batch=True)]


def record(method, workload, outcome, *, assumption=None, declared=False, error=None, peer=False, mode="float32"):
    return Record(id=f"{method}-{workload}-{mode}-cpu", method=method, workload=workload, dtype=mode, device="cpu",
                  outcome=outcome, assumption=assumption, declared=declared, error=error, peer=peer)


def judge(rec, breaks=frozenset()):
    return verdict(rec, frozenset(breaks), rec.peer, EXPECT, DEVIATIONS).kind


@pytest.mark.parametrize("outcome, assumption, kind", [
    ("unsupported", "batch-first-layers", "pass"),
    ("unsupported", "matches-definition", "fail"),
    ("pass", None, "fail"),
    ("fail", None, "fail"),
])
def test_an_adversarial_cell_must_have_the_expected_outcome(outcome, assumption, kind):
    assert judge(record("hooks", "time_major_linear", outcome, assumption=assumption)) == kind


def test_refusing_what_a_method_can_do_fails_like_a_wrong_answer():
    assert judge(record("vmap", "time_major_linear", "unsupported", assumption="batching-rules")) == "fail"


@pytest.mark.parametrize("outcome, peer, kind", [
    ("fail", True, "xfail"),
    ("pass", True, "fail"),
    ("unsupported", True, "skip"),
])
def test_a_peer_is_held_to_its_recorded_deviations(outcome, peer, kind):
    assert judge(record("torch-ew", "text_classifier", outcome, peer=peer)) == kind


def test_a_peer_failure_no_entry_covers_fails():
    assert judge(record("opacus-ew", "mlp", "fail", peer=True)) == "fail"


@pytest.mark.parametrize("outcome, assumption, declared, kind", [
    ("pass", None, False, "pass"),
    ("unsupported", "layer-rules", True, "skip"),
    ("unsupported", "batching-rules", False, "skip"),
    ("unsupported", "matches-definition", False, "fail"),
    ("fail", None, False, "fail"),
])
def test_our_methods_on_the_zoo_pass_or_refuse_only_what_they_declare(outcome, assumption, declared, kind):
    assert judge(record("hooks", "mlp", outcome, assumption=assumption, declared=declared)) == kind


@pytest.mark.parametrize("outcome, error, declared, kind", [
    ("error", "LossNotPerSample", False, "pass"),
    ("unsupported", None, True, "pass"),
    ("pass", None, False, "fail"),
])
def test_a_loss_that_depends_on_the_batch_must_be_refused_by_every_method(outcome, error, declared, kind):
    rec = record("torch-ew", "batch_scaled_loss", outcome, error=error, declared=declared, peer=True)
    assert judge(rec, {"loss-per-sample"}) == kind


def test_the_reference_compared_with_itself_is_not_a_check():
    assert judge(record("loop", "mlp", "reference", mode="float64")) == "skip"


def test_a_mode_a_method_does_not_offer_is_skipped_even_where_a_table_expects_an_answer():
    rec = record("hooks", "time_major_linear", "unsupported", assumption="device-and-dtype", declared=True, mode="float64")
    assert judge(rec) == "skip"
