"""The quick benchmark's pytest-benchmark hooks: machine identity and skip reasons in the JSON."""
from persample.bench.pytest_plugin import pytest_benchmark_update_json, pytest_benchmark_update_machine_info

__all__ = ["pytest_benchmark_update_json", "pytest_benchmark_update_machine_info"]
