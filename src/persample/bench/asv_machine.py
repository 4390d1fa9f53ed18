"""asv's machine record, with what asv leaves out: GPU model, driver, CUDA, torch and jax versions.

asv names results by machine and records only OS, CPU and RAM; this writes the entry `asv run
--machine NAME` reads (in ~/.asv-machine.json, through asv's own API) under the name
`persample.machine` gives (the GPU's, e.g. "h100-80gb", on CUDA). asv copies every field into
`<results>/<machine>/machine.json` and into each result's parameters, so values are flat strings.
"""
from __future__ import annotations

from pathlib import Path

from asv.machine import Machine, MachineCollection

from ..machine import machine_info

EXTRA_FIELDS = ("device", "gpu", "gpu_memory_bytes", "driver", "cuda", "compute_capability")
VERSION_FIELDS = ("torch", "jax", "jaxlib", "triton")


def machine_entry(info: dict | None = None) -> dict[str, str]:
    """asv's default fields for this host, named and extended from `persample.machine`."""
    info = info or machine_info()
    entry = {key: str(value) for key, value in Machine.get_defaults().items()}
    entry["machine"] = info["name"]
    entry.update({key: str(info.get(key) or "") for key in EXTRA_FIELDS})
    entry.update({key: str(info["versions"].get(key) or "") for key in VERSION_FIELDS})
    return entry


def write_machine_entry(info: dict | None = None, path: Path | None = None) -> str:
    """Store this machine's entry where asv looks (or at `path`); returns the machine's name."""
    entry = machine_entry(info)
    MachineCollection.save(entry["machine"], entry, _path=str(path) if path else None)
    return entry["machine"]
