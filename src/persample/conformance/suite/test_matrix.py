"""Every method × workload × mode against the float64 loop reference, judged by the gate.

A cell ends pass (within `tolerance_for(mode)`), fail (the measured error or the exception),
unsupported (the method's reason and the assumption that failed), error (`LossNotPerSample`) or
reference (the float64 loop itself). `persample.conformance.gate` says what that means: our
methods on the adversarial family must have the outcome `expected_outcomes.toml` gives; every
method raises `LossNotPerSample` on a loss that depends on the batch and refuses a model that
couples samples; peers are held to the strict known-deviations gate; our methods must pass the
zoo (refusing only what they declare up front).
"""
import fnmatch

import pytest

from persample.conformance import run_cell, verdict
from persample.conformance.cells import declared_modes
from persample.conformance.results_file import PROPERTY
from persample.workloads import all_workloads


def test_cell(cell, references, deviations, expectations, record_property):
    record = run_cell(cell, references)
    judged = verdict(record, cell.workload.breaks, cell.method.capabilities.peer, expectations, deviations)
    expected = expectations.get(record.method, record.workload, record.dtype)
    record.expected = str(expected) if expected is not None else None
    record.verdict = judged.kind
    record_property(PROPERTY, record.to_dict())
    if judged.kind == "skip":
        pytest.skip(judged.message)
    if judged.kind == "xfail":
        pytest.xfail(judged.message)
    if judged.kind == "fail":
        pytest.fail(judged.message, pytrace=False)


def test_every_deviation_entry_can_match_a_cell(deviations, device):
    """An entry naming a workload, mode or check that does not exist is a typo or stale (a workload of an
    optional family counts as existing where its package is not installed)."""
    from persample.workloads import huggingface

    workloads = [w.name for w in all_workloads()] + list(huggingface.NAMES)
    modes = declared_modes(device)
    for entry in deviations:
        if not any(fnmatch.fnmatchcase(device, p) for p in entry.devices):
            continue
        for patterns, universe, what in ((entry.workloads, workloads, "workload"), (entry.modes, modes, "mode")):
            for pattern in patterns:
                assert fnmatch.filter(universe, pattern), f"{entry.source}: {what} {pattern!r} matches no {what}"


def test_every_expected_outcome_names_a_workload_and_a_method(expectations):
    from persample.methods.registry import registered

    adversarial = {w.name for w in all_workloads() if "adversarial" in w.tags}
    assert set(expectations.table) == adversarial, "expected_outcomes.toml must have one table per adversarial workload"
    assert expectations.methods() <= set(registered())


def test_the_expected_outcomes_agree_with_what_workloads_break_and_methods_rely_on(expectations):
    """A method refuses only for an assumption it relies on or declares a refusal for; and where a
    workload breaks an assumption a method relies on, the method must not be expected right."""
    from persample.assumptions import LOSS_PER_SAMPLE, SAMPLES_INDEPENDENT, SETTING
    from persample.methods.registry import registered

    methods = registered()
    for workload in (w for w in all_workloads() if "adversarial" in w.tags):
        for method_name, expected in expectations.table[workload.name].items():
            caps = methods[method_name.partition("@")[0]].capabilities
            own = {*caps.relies_on, *(r.assumption for r in caps.all_refusals()), SAMPLES_INDEPENDENT.id, SETTING.id}
            if expected.kind == "refused":
                assert expected.detail in own, f"{workload.name}: {method_name} refuses for {expected.detail}, not its own"
            broken = workload.breaks & set(caps.relies_on) - {LOSS_PER_SAMPLE.id}
            if broken:
                assert expected.kind != "right", f"{workload.name} breaks {broken}, which {method_name} relies on"
