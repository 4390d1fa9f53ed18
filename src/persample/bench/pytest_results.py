"""Reading pytest-benchmark JSON of the quick benchmark: timed cases from `benchmarks` (their case in
`extra_info`), skipped and failed ones from `persample_not_run`, the machine from `machine_info`."""
from __future__ import annotations

import json
from pathlib import Path

from .calibration import Calibration
from .grid import Case
from .observations import Machine, Observation
from .outcomes import CASE_FIELDS


def machine_of(data: dict) -> Machine:
    """The `Machine` of a pytest-benchmark JSON file. Raises `ValueError` when it lacks persample's machine
    identity.
    """
    identity = data.get("machine_info", {}).get("persample")
    if not identity:
        raise ValueError("no persample machine identity in machine_info (was tests/bench/conftest.py loaded?)")
    return Machine(identity["name"], identity.get("device") or "cpu", identity.get("gpu") or "")


def calibration_of(data: dict) -> Calibration | None:
    """The `Calibration` stored in a pytest-benchmark JSON file, or None."""
    stored = data.get("machine_info", {}).get("persample", {}).get("calibration")
    return Calibration(**stored) if stored else None


def read_pytest_benchmark(path: Path) -> tuple[list[Observation], Calibration | None]:
    """The file's observations and the calibration of its machine (if it was stored)."""
    data = json.loads(Path(path).read_text())
    machine = machine_of(data)
    common = {"machine": machine, "source": "pytest-benchmark", "commit": data.get("commit_info", {}).get("id", ""),
              "date": data.get("datetime", "")}
    observations = []
    for bench in data.get("benchmarks", []):
        info, stats = bench["extra_info"], bench["stats"]
        case = Case(**{field: info[field] for field in CASE_FIELDS})
        observations.append(Observation(
            case=case, status="ok", median_s=stats["median"], spread_s=stats.get("iqr"),
            peak_memory_bytes=info.get("peak_memory_bytes"), **common,
        ))
    for item in data.get("persample_not_run", []):
        observations.append(Observation(case=Case(**item["case"]), status=item["status"], reason=item["reason"], **common))
    return observations, calibration_of(data)
