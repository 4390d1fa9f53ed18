"""pytest-benchmark hooks of the quick benchmark: machine identity (GPU, driver, CUDA, versions,
calibration) into `machine_info`, and the skipped and failed cases (with reasons) into the JSON,
which otherwise lists only what ran. tests/bench/conftest.py imports these hooks."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..machine import default_device, machine_info as identify
from .calibration import load_latest
from .quick import NOT_RUN

CALIBRATIONS = Path("reports") / "asv" / "results"


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """pytest-benchmark hook: adds persample's machine identity and its latest calibration (or None) under
    machine_info['persample'].
    """
    identity = identify(default_device())
    calibration = load_latest(Path(config.rootpath) / CALIBRATIONS, identity["name"])
    identity["calibration"] = asdict(calibration) if calibration else None
    machine_info["persample"] = identity


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    """pytest-benchmark hook: records the cases this session did not run, with their reasons, as
    'persample_not_run'.
    """
    output_json["persample_not_run"] = list(NOT_RUN)
