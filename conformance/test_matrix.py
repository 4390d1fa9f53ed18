"""Every method × workload × mode against the float64 loop reference.

A cell passes within `tolerance_for(mode)`, fails with the measured error or the exception, or is
unsupported with the method's reason. Our methods must pass wherever they claim support; a peer's
failure is recorded as an expected failure (a finding for the report), not a red CI. Models that
couple samples (BatchNorm in training) must be refused by every method.
"""
import pytest

from persample.conformance import run_cell


def test_cell(cell, references, known_deviations, record_property):
    record = run_cell(cell, references, known_deviations)
    record_property("conformance", record.to_dict())
    refused = "refused" in cell.workload.tags
    if refused:
        assert record.outcome == "unsupported", f"{cell.id}: {record.reason}"
        assert "BatchNorm" in record.reason and "GroupNorm" in record.reason, record.reason
    elif record.outcome == "unsupported":
        pytest.skip(f"unsupported: {record.reason}")
    elif record.outcome == "fail" and record.expected_failure:
        pytest.xfail(f"peer deviation: {record.known_deviation or record.reason}")
    elif record.outcome == "fail":
        pytest.fail(f"{cell.id}: {record.reason}", pytrace=False)
