"""One-time calibration of a machine: the rates the two floors divide by (`floor`): the bandwidth
into memory already touched (the warm floor), the rate of writing into freshly allocated memory (the
fresh-output floor) and matrix throughput per mode. Stored with the machine's results, one JSON
object per line (`<results>/<machine>/calibration.jsonl`, not `.json`: asv would try to read that
as a result).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..machine import machine_info
from ..modes import benchmark_modes, get_mode
from .timing import CPU_ALLOCATOR_ENV, synchronize, threading_env

FILENAME = "calibration.jsonl"


@dataclass(frozen=True)
class Calibration:
    """What a machine can do, measured once: memory `bandwidth` in bytes/s (a large copy's bytes read +
    written, into memory already touched: the warm rate), `fresh_write` in bytes/s (bytes written into
    memory allocated for them: allocation, first touch (page faults) and the write, as a step's new
    per-sample-gradient tensors are made; None in records from before it was measured), `matmul`
    FLOP/s per mode, with the machine, device, date, library versions and the process settings that
    govern allocation (`timing.CPU_ALLOCATOR_ENV`) it was measured under.
    """

    machine: str
    device: str
    date: str
    bandwidth: float  # bytes/s, a large copy's bytes read + written
    matmul: dict[str, float] = field(default_factory=dict)  # mode -> FLOP/s of a large square matmul
    versions: dict[str, str | None] = field(default_factory=dict)
    fresh_write: float | None = None  # bytes/s written into freshly allocated memory
    settings: dict[str, str | None] = field(default_factory=dict)  # allocator variables in effect

    def throughput(self, mode: str) -> float | None:
        """The measured matmul FLOP/s in `mode`, or None where it was not measured."""
        return self.matmul.get(mode)

    def describe(self) -> str:
        """One line for a newcomer: the rates the two floors divide by."""
        fresh = f"{self.fresh_write / 1e9:.1f} GB/s" if self.fresh_write else "unknown"
        matmul = ", ".join(f"{mode} {flops / 1e9:.0f} GFLOP/s" for mode, flops in self.matmul.items())
        return (f"calibration of {self.machine} ({self.date}): writing into memory already touched "
                f"{self.bandwidth / 1e9:.1f} GB/s (the warm floor), allocating and writing new memory {fresh} "
                f"(the fresh-output floor), matmul {matmul}")


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


def measure_fresh_write(device: torch.device, nbytes: int | None = None) -> float:
    """Bytes/s of writing a buffer far larger than any cache, allocated anew each time: what writing a
    new result costs, first touch included (bytes written counted once). The fastest of two writers,
    `fill_(1)` and `zero_()` (which torch runs as a streaming memset), since a floor is the least
    time any method could take: on a 2-vCPU AMD EPYC VM with huge pages, 1 GiB took 44 ms with
    `fill_` (and with the Linear rule's broadcast product) and 33 ms with `zero_`, and a peer wrote
    linear_large's 1.08 GB of per-sample gradients faster than `fill_`'s rate allows.
    On a CPU the allocator maps large blocks fresh from the kernel, so every page faults on its first
    write (4 KiB pages: 340 ms for 1 GiB on that VM, against 60 ms into touched memory); on a GPU
    the caching allocator hands back a cached block, and this is close to the warm rate."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    count = nbytes // 4
    seconds = min(
        best_seconds(lambda: torch.empty(count, dtype=torch.float32, device=device).fill_(1.0), device, repeats=5),
        best_seconds(lambda: torch.empty(count, dtype=torch.float32, device=device).zero_(), device, repeats=5),
    )
    return nbytes / seconds


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


def calibrated_modes(device: torch.device) -> list[str]:
    """The modes whose matmul throughput `calibrate` measures on `device`: those its benchmark grid
    times (`Mode.benchmarked`) and its hardware offers, in display order."""
    return [m for m in benchmark_modes(device.type) if get_mode(m).unsupported_reason(device) is None]


def calibrate(device: torch.device) -> Calibration:
    """Measure this machine's `device` (a few seconds)."""
    info = machine_info(device)
    modes = calibrated_modes(device)
    return Calibration(
        machine=info["name"], device=device.type, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        bandwidth=measure_bandwidth(device), matmul={m: measure_matmul(device, m) for m in modes},
        versions={k: v for k, v in info["versions"].items() if k in ("torch", "jax")},
        fresh_write=measure_fresh_write(device), settings={k: os.environ.get(k) for k in CPU_ALLOCATOR_ENV},
    )


def calibrate_as_benchmarks_run(device: torch.device) -> Calibration:
    """`calibrate(device)` in a child process with the benchmark processes' environment
    (`timing.threading_env`): the allocator reads its settings once, when a process starts
    allocating, so the fresh-write rate must be measured in a process started as the benchmarks are.
    Raises `subprocess.CalledProcessError` if the child fails."""
    done = subprocess.run([sys.executable, "-m", __name__, device.type], env={**os.environ, **threading_env()},
                          capture_output=True, text=True, check=True)
    return Calibration(**json.loads(done.stdout.strip().splitlines()[-1]))


def save(calibration: Calibration, results_dir: Path) -> Path:
    """Append `calibration` as one JSON line to `<results_dir>/<machine>/calibration.jsonl`; returns that path."""
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
    """The stored calibration of this machine, measuring (and storing) it first if needed: when
    there is none, when `again`, or when the stored one predates the fresh-write rate. Measured in a
    process started as the benchmarks are (`calibrate_as_benchmarks_run`)."""
    existing = None if again else load_latest(results_dir, machine_info(device)["name"])
    if existing is not None and existing.fresh_write is not None:
        return existing
    calibration = calibrate_as_benchmarks_run(device)
    save(calibration, results_dir)
    return calibration


if __name__ == "__main__":  # `calibrate_as_benchmarks_run`'s child: one JSON line on stdout
    print(json.dumps(asdict(calibrate(torch.device(sys.argv[1])))))
