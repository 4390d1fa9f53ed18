"""What a conformance run's options select: the methods, workloads, modes, device, known
deviations and the results file."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from ..assumptions import LAYER_RULES
from ..deviations import Deviation, load_deviations, packaged_deviations
from ..machine import default_device
from ..methods.registry import Method, get, load_object, registered
from ..workloads import Workload, all_workloads, get_workload
from .options import value

RESULTS_SUFFIX = ".json"


@functools.cache
def _method(spec: str) -> Method:
    return load_object(spec) if ":" in spec else get(spec)


def methods(config: pytest.Config) -> list[Method]:
    """The methods named by the method option (registered names or module:object specs, which
    are registered on the way), else every registered method."""
    specs = value(config, "method")
    return [_method(spec) for spec in specs] if specs else list(registered().values())


def rule_methods(config: pytest.Config) -> list[Method]:
    """The selected methods that compute with per-layer rules (they rely on `layer-rules`)."""
    return [m for m in methods(config) if LAYER_RULES.id in m.capabilities.relies_on]


def workloads(config: pytest.Config) -> list[Workload]:
    """The workloads named by the workload option, else every workload."""
    names = value(config, "workload")
    return [get_workload(name) for name in names] if names else all_workloads()


def modes(config: pytest.Config) -> tuple[str, ...] | None:
    """The modes named by the mode option (maybe 'all'), or None for the CI profile."""
    return tuple(value(config, "mode")) or None


def device(config: pytest.Config) -> str:
    """The device type to run on: the device option, else cuda when present, else cpu."""
    return value(config, "device") or default_device().type


def deviations(config: pytest.Config) -> list[Deviation]:
    """persample's known deviations, then those of every deviations file given."""
    return [*packaged_deviations(), *(d for path in value(config, "deviations") for d in load_deviations(Path(path)))]


def results_path(config: pytest.Config, machine: str) -> Path:
    """The results file of `machine`: the results option when it ends in .json, `<it>/<machine>.json`
    for any other path (a directory), else `reports/conformance/<machine>.json` under the rootdir."""
    chosen = value(config, "results")
    if chosen is None:
        return config.rootpath / "reports" / "conformance" / f"{machine}{RESULTS_SUFFIX}"
    path = Path(chosen).expanduser().absolute()
    return path if path.suffix == RESULTS_SUFFIX else path / f"{machine}{RESULTS_SUFFIX}"
