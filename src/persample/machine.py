"""Which machine results come from: device, GPU model, library versions; shared by the
conformance results, the benchmark results and the report, so they line up by machine name."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re

import torch

LIBRARIES = ("torch", "jax", "jaxlib", "triton", "opacus", "backpack-for-pytorch", "numpy", "persample")


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def library_versions() -> dict[str, str | None]:
    """{distribution name: installed version, or None} of the libraries results depend on (torch, jax, jaxlib,
    triton, opacus, backpack-for-pytorch, numpy, persample).
    """
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_slug(name: str, memory_bytes: int) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb'; a name asv and the report can share."""
    model = re.sub(r"^nvidia\s+", "", name.lower())
    model = re.split(r"[\s_-]+", model)[0]
    return f"{model}-{round(memory_bytes / 2**30)}gb"


def cpu_slug(model: str, cores: int | None) -> str:
    """'AMD EPYC 9554 64-Core Processor', 2 -> 'cpu-amd-epyc-9554-2core'."""
    words = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*|\d+-core", " ", model.lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", words)[:4])
    return f"cpu-{slug or 'unknown'}-{cores}core"


def machine_name(device: torch.device | str) -> str:
    """The name results of `device` on this machine are filed under: the GPU's slug for CUDA
    ('h100-80gb'), else the CPU's ('cpu-amd-epyc-9554-2core')."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return gpu_slug(props.name, props.total_memory)
    return cpu_slug(cpu_model(), os.cpu_count())


def machine_info(device: torch.device | str | None = None) -> dict:
    """Identity of this machine for `device`: name (the GPU for CUDA), hardware and versions."""
    device = torch.device(device) if device is not None else default_device()
    info = {
        "device": device.type,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "gpu": None,
        "driver": None,
        "cuda": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            compute_capability=f"{props.major}.{props.minor}",
            driver=_nvidia_driver(),
        )
    info["name"] = machine_name(device)
    return info


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as version:
            match = re.search(r"Kernel Module\s+([\d.]+)", version.read())
            return match.group(1) if match else None
    except OSError:
        return None
