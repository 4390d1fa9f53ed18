"""The quick benchmark: each case of the "quick" grid timed by pytest-benchmark, its peak memory in
extra_info. With --benchmark-disable it is a smoke test; `persample.bench.quick` runs it for the
main job and writes the JSON `persample collect` reads."""
import pytest

from persample.bench.quick import open_quick_case, quick_cases


@pytest.mark.parametrize("case", quick_cases(), ids=lambda case: case.id)
def test_per_sample_step(benchmark, case):
    prepared = open_quick_case(case)
    try:
        benchmark.extra_info.update(case.__dict__, peak_memory_bytes=prepared.peak_memory())
        benchmark(prepared.run)
    finally:
        prepared.close()
    assert benchmark.extra_info["peak_memory_bytes"] > 0
