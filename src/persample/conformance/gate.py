"""The conformance gate: what a cell's record means for the test run.

- A cell with an expected outcome (`expectations`: our methods on the adversarial family) passes
  when the record has that outcome, and fails otherwise.
- A workload that breaks `loss-per-sample` must make every method raise `LossNotPerSample`; one
  that breaks `samples-independent` must be refused by every method.
- A peer (or any method with entries in the deviations files) is held to the strict deviations
  gate: a failure no entry covers fails ("record it"), a covered failure is an expected failure, a
  covered cell that passes fails ("remove the entry"). A refusal is recorded and skipped.
- Our other cells (the zoo) must pass; a refusal the method declares up front, or one vmap finds by
  trying (torch.func cannot batch an operation), is skipped with its reason, while one raised by its
  checks on the example batch fails (the zoo breaks nothing).
- The float64 loop is the reference itself: its cells are not checks.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..assumptions import BATCHING_RULES, LOSS_PER_SAMPLE, SAMPLES_INDEPENDENT, SETTING
from ..deviations import Deviation
from .expectations import Expectations
from .records import Record

LOSS_ERROR = "LossNotPerSample"
DISCOVERED = {BATCHING_RULES.id}
"""Refusals found by trying, not by a check of the answer: torch.func raising on an operation it
cannot batch (some only under autocast) is a limit of the library, not a false alarm."""


@dataclass(frozen=True)
class Verdict:
    """What the gate makes of one cell's record: 'pass', 'fail', 'xfail' (a known deviation) or 'skip', with a
    message.
    """

    kind: str  # "pass" | "fail" | "xfail" | "skip"
    message: str = ""


def covering(deviations: list[Deviation], method: str, check: str, workload: str, mode: str, device: str) -> Deviation | None:
    """The first known deviation that covers `method`'s `check` on `workload` in `mode` on `device`, or None."""
    return next((d for d in deviations if d.covers(method, check, workload, mode, device)), None)


def verdict(record: Record, breaks: frozenset[str], peer: bool, expectations: Expectations,
            deviations: list[Deviation]) -> Verdict:
    """The gate's `Verdict` on one record: the reference is skipped; a workload that breaks loss-per-sample or
    samples-independent must be refused; then the expectations table, the known deviations (peers are
    held strictly to them), a pass, an allowed refusal, else fail.
    """
    what = f"{record.id}: {record.outcome}" + (f" ({record.reason})" if record.reason else "")
    if record.outcome == "reference":
        return Verdict("skip", "the float64 loop is the reference itself: comparing it with itself checks nothing")
    if LOSS_PER_SAMPLE.id in breaks:  # (a method that refuses the model up front never reaches the loss)
        ok = (record.outcome == "error" and record.error == LOSS_ERROR) or (record.outcome == "unsupported" and record.declared)
        return _expect(ok, f"expected {LOSS_ERROR}; got {what}")
    if SAMPLES_INDEPENDENT.id in breaks:
        ok = record.outcome == "unsupported" and record.assumption == SAMPLES_INDEPENDENT.id
        return _expect(ok, f"expected a refusal ({SAMPLES_INDEPENDENT.id}); got {what}")
    if record.outcome == "unsupported" and record.declared and record.assumption == SETTING.id:
        return Verdict("skip", f"unsupported: {record.reason}")  # a mode or device it does not offer
    expected = expectations.get(record.method, record.workload, record.dtype)
    if expected is not None:
        ok = expected.matches(record.outcome, record.assumption, record.error)
        return _expect(ok, f"expected {expected}; got {what}")
    deviation = covering(deviations, record.method, "matrix", record.workload, record.dtype, record.device)
    if peer or deviation is not None:
        return _strict(record, deviation, what)
    if record.outcome == "pass":
        return Verdict("pass")
    if record.outcome == "unsupported" and (record.declared or record.assumption in DISCOVERED | breaks):
        return Verdict("skip", f"unsupported: {record.reason}")  # a refusal naming what the workload breaks is right
    return Verdict("fail", f"{what}" + (" — refused by its checks on a model that breaks no assumption"
                                        if record.outcome == "unsupported" else ""))


def _strict(record: Record, deviation: Deviation | None, what: str) -> Verdict:
    if record.outcome == "unsupported":
        return Verdict("skip", f"unsupported: {record.reason}")
    if record.outcome in ("fail", "error") and deviation is not None:
        return Verdict("xfail", f"known deviation ({deviation.source}): {deviation.reason}")
    if record.outcome in ("fail", "error"):
        return Verdict("fail", f"new deviation of {record.method}, not in any deviations file: {what}. Record it "
                               "(a [[deviation]] entry with its reason and the model features that trigger it)")
    if deviation is not None:
        return Verdict("fail", f"{record.id} passes, but {deviation.source} records it as a deviation: remove the "
                               "entry (or narrow it) now that it no longer happens")
    return Verdict("pass")


def _expect(ok: bool, message: str) -> Verdict:
    return Verdict("pass") if ok else Verdict("fail", message)
