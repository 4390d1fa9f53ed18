"""The quick benchmark: each case of the "quick" grid timed by pytest-benchmark, its peak memory in
extra_info. With timing off (--benchmark-disable, or under xdist) it is a smoke test of every method
on every workload at the smallest batch size; `persample.bench.quick` runs it for the main job and writes the JSON
`persample collect` reads."""
from persample.bench.quick import open_quick_case, quick_cases


def timing_disabled(config) -> bool:
    """pytest-benchmark's own verdict (its session, set up before collection): timing is off with
    --benchmark-disable, and also under xdist (CI's `pytest -n 2`), where it times nothing."""
    session = getattr(config, "_benchmarksession", None)
    return session.disabled if session is not None else config.getoption("benchmark_disable")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = quick_cases(smoke=timing_disabled(metafunc.config))
        metafunc.parametrize("case", cases, ids=lambda case: case.id)


def test_per_sample_step(benchmark, case):
    prepared = open_quick_case(case)
    try:
        benchmark.extra_info.update(case.__dict__, peak_memory_bytes=prepared.peak_memory())
        benchmark(prepared.run)
    finally:
        prepared.close()
    assert benchmark.extra_info["peak_memory_bytes"] > 0
