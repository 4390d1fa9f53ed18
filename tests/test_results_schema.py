"""The results table has one definition (`persample.results_schema`): the collector writes exactly
its columns, the report reads them back, and the key is the same tuple on both sides."""
from persample.bench.collect import row
from persample.bench.grid import Case
from persample.bench.observations import Machine, Observation
from persample.results_schema import COLUMNS, KEY_COLUMNS, BenchRow


def observation(method: str = "hooks") -> Observation:
    case = Case("mlp", "full", 32, "float32", method)
    return Observation(Machine("cpu-test-2core", "cpu"), case, "asv", "c" * 40, "2026-06-01T00:00:00+00:00", "ok",
                       median_s=0.0123, spread_s=0.0001, peak_memory_bytes=1000)


def test_the_collector_writes_only_the_schemas_columns():
    written = row(observation(), observation("baseline"), calibration=None)
    assert set(written) <= set(COLUMNS)
    assert set(COLUMNS) - set(written) <= {column for column in COLUMNS if "floor" in column}  # a workload without one


def test_a_row_read_back_has_the_observations_key():
    written = row(observation(), None, calibration=None)
    text = {column: "" if written.get(column) is None else str(written[column]) for column in COLUMNS}
    read = BenchRow.from_csv(text)
    assert read.key == observation().key
    assert KEY_COLUMNS == ("machine", "gpu", "workload", "size", "batch_size", "dtype", "method", "variant")
    assert (read.median_s, read.peak_memory_bytes, read.baseline_s) == (0.0123, 1000, None)


def test_absent_optional_columns_take_their_defaults_and_absent_required_ones_raise():
    minimal = {"machine": "m", "workload": "mlp", "batch_size": "8", "dtype": "float32", "method": "vmap"}
    read = BenchRow.from_csv(minimal)
    assert (read.variant, read.status, read.median_s, read.gpu) == ("eager", "ok", None, "")
    try:
        BenchRow.from_csv({k: v for k, v in minimal.items() if k != "method"})
    except KeyError as error:
        assert error.args == ("method",)
    else:
        raise AssertionError("a row without its method was read")
