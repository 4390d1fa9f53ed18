"""Device-synchronised timing: the clock asv reads (CUDA events on a GPU), warm-up, asv's sampling.

A step on a GPU returns before its kernels finish, so every timed call ends with a device-wide
synchronize (which also waits for JAX's own streams); on CUDA the clock itself is GPU time between
two events, read after each event completes.
"""
from __future__ import annotations

import os
import time
import timeit
from collections.abc import Callable
from typing import NamedTuple

import torch


def synchronize(device: torch.device) -> None:
    """Wait for all work queued on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CudaEventClock:
    """A `timer` for asv: seconds of GPU time since its first reading, measured with CUDA events."""

    def __init__(self) -> None:
        self._origin: torch.cuda.Event | None = None

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self._origin is None:
            self._origin = event
            return 0.0
        return self._origin.elapsed_time(event) / 1e3  # elapsed_time is in milliseconds


def device_clock() -> Callable[[], float]:
    """CUDA events where CUDA runs the benchmarks, else the wall clock asv uses by default."""
    return CudaEventClock() if torch.cuda.is_available() else timeit.default_timer


class AsvTiming(NamedTuple):
    """asv's sampling attributes: (min, max, max seconds) samples, runs, warm-up, rounds, timeout."""

    repeat: tuple[int, int, float]
    min_run_count: int
    warmup_time: float
    rounds: int
    timeout: float


# Setup warms every case itself (compilation, autotuning, allocator), so asv's own warm-up is off;
# one round per case keeps the number of spawned processes (each imports torch) down. A CPU step
# can take seconds (loop at B=256), so one sample may be all it gets there.
TIMING = {
    "cuda": AsvTiming(repeat=(5, 50, 5.0), min_run_count=5, warmup_time=0.0, rounds=1, timeout=600.0),
    "cpu": AsvTiming(repeat=(1, 10, 4.0), min_run_count=1, warmup_time=0.0, rounds=1, timeout=600.0),
}


def asv_timing() -> AsvTiming:
    """asv's sampling settings for this machine: the 'cuda' ones when CUDA is available, else the 'cpu' ones."""
    return TIMING["cuda" if torch.cuda.is_available() else "cpu"]


# GNU OpenMP threads spin while waiting for work; on a small shared VM that turned a 1.8 ms step
# into 225 ms (the text classifier's baseline at B=256 on 2 vCPUs). Sleeping threads measure the
# step, not the scheduler. Set for the benchmark processes unless the caller chose otherwise.
CPU_THREADING_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# A step's new per-sample-gradient tensors are large: torch's CPU allocator gets them freshly mapped
# from the kernel, and each 4 KiB page faults on its first write (writing 1 GiB into new memory took
# 340 to 700 ms on a 2-vCPU AMD EPYC VM, 60 ms into memory already touched). THP_MEM_ALLOC_ENABLE=1
# makes torch align large blocks to 2 MiB and ask for transparent huge pages (where the kernel's
# /sys/kernel/mm/transparent_hugepage/enabled is `madvise` or `always`): 512 times fewer faults, the
# same fresh write in about 60 ms. Process-wide, so the same for every method, the baseline and the
# calibration's fresh-write rate; read once, when the process first allocates.
CPU_ALLOCATOR_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def threading_env() -> dict[str, str]:
    """The variables of `CPU_THREADING_ENV` and `CPU_ALLOCATOR_ENV` the caller's environment does not
    set already: what the benchmark processes (and the calibration) are started with."""
    return {key: value for key, value in {**CPU_THREADING_ENV, **CPU_ALLOCATOR_ENV}.items() if key not in os.environ}


def warm_up(run: Callable[[], object], max_steps: int = 3, budget_s: float = 1.0) -> int:
    """Run `run` once, then again while under `max_steps` and `budget_s`; returns the count."""
    start, steps = time.perf_counter(), 0
    while steps == 0 or (steps < max_steps and time.perf_counter() - start < budget_s):
        run()
        steps += 1
    return steps
