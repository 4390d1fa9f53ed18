"""One-time calibration of a machine: memory bandwidth and matrix throughput per mode, the two
rates the roofline floor divides by. Stored with the machine's results, one JSON object per line
(`<results>/<machine>/calibration.jsonl`, not `.json`: asv would try to read that as a result).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..machine import machine_info
from ..modes import get_mode
from .timing import synchronize

FILENAME = "calibration.jsonl"
MODES_BY_DEVICE = {"cuda": ("float32", "tf32", "bfloat16", "float16"), "cpu": ("float32", "bfloat16")}


@dataclass(frozen=True)
class Calibration:
    machine: str
    device: str
    date: str
    bandwidth: float  # bytes/s, a large copy's bytes read + written
    matmul: dict[str, float] = field(default_factory=dict)  # mode -> FLOP/s of a large square matmul
    versions: dict[str, str | None] = field(default_factory=dict)

    def throughput(self, mode: str) -> float | None:
        return self.matmul.get(mode)


def best_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` device-synchronised runs, after one untimed run."""
    run()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Bytes/s of `dst.copy_(src)` on buffers far larger than any cache (read + write counted)."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / best_seconds(lambda: target.copy_(source), device, repeats=5)


def measure_matmul(device: torch.device, mode_name: str, max_side: int | None = None) -> float:
    """FLOP/s of a square matmul in `mode`, its side doubled until one product takes 50 ms."""
    mode = get_mode(mode_name)
    max_side = max_side or (16384 if device.type == "cuda" else 4096)
    side = 512
    with mode.active():
        while True:
            a = torch.randn(side, side, device=device).to(mode.dtype)
            b = torch.randn(side, side, device=device).to(mode.dtype)
            seconds = best_seconds(lambda: a @ b, device, repeats=3)
            if seconds >= 0.05 or side >= max_side:
                return 2 * side**3 / seconds
            side *= 2


def calibrate(device: torch.device) -> Calibration:
    """Measure this machine's `device` (a few seconds)."""
    info = machine_info(device)
    modes = [m for m in MODES_BY_DEVICE[device.type] if get_mode(m).unsupported_reason(device) is None]
    return Calibration(
        machine=info["name"], device=device.type, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        bandwidth=measure_bandwidth(device), matmul={m: measure_matmul(device, m) for m in modes},
        versions={k: v for k, v in info["versions"].items() if k in ("torch", "jax")},
    )


def save(calibration: Calibration, results_dir: Path) -> Path:
    path = Path(results_dir) / calibration.machine / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(json.dumps(asdict(calibration)) + "\n")
    return path


def load_latest(results_dir: Path, machine: str) -> Calibration | None:
    """The machine's most recent calibration, or None if it was never calibrated."""
    path = Path(results_dir) / machine / FILENAME
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Calibration(**max(records, key=lambda r: r["date"])) if records else None


def ensure_calibrated(results_dir: Path, device: torch.device, again: bool = False) -> Calibration:
    """The stored calibration of this machine, measuring (and storing) it first if needed."""
    existing = None if again else load_latest(results_dir, machine_info(device)["name"])
    if existing is not None:
        return existing
    calibration = calibrate(device)
    save(calibration, results_dir)
    return calibration
