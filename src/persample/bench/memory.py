"""Peak memory of one case: the most bytes held above the model and the batch while it runs.

- CUDA: torch's allocator, `max_memory_allocated` after `reset_peak_memory_stats`, from a clean
  baseline (garbage collected, cache emptied). The window spans prepare and the first step, so
  state a method keeps (a CUDA graph's memory pool, hook buffers) and one-time costs (compilation,
  autotuning) count: a method that cannot fit them cannot run. JAX allocates through XLA, which
  torch cannot see: its device `peak_bytes_in_use` is added for JAX methods.
- CPU, PyTorch methods: torch's CPU allocator, replayed from the profiler's allocation events
  (`profile_memory=True`): the running sum of allocated minus freed bytes, its maximum. Exact and
  deterministic, and the same quantity as on CUDA. The process's resident set is not: glibc keeps
  freed pages, so its high-water mark depends on what ran before (measured 525 MiB for vmap on the
  MLP at B=256, the size of its output, against 680-790 MiB of resident-set growth).
- CPU, other frameworks (JAX): the profiler cannot see their allocations, so the resident set's
  high-water growth over one warmed-up step, after returning freed heap pages to the OS
  (`malloc_trim`) and resetting the mark (`/proc/self/clear_refs`); Linux only. A lower bound when
  the framework reuses memory it keeps resident.
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch


class Probe(Protocol):
    """Measures peak memory: `start()`, run, then `stop()` returns the peak bytes above the level at start."""

    def start(self) -> None:
        """Record the current level (after collecting garbage)."""

    def stop(self) -> int:
        """Peak bytes above the level at `start`."""


class CudaAllocatorProbe:
    """Peak bytes torch's CUDA caching allocator handed out on `device` between start and stop."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.base = device, 0

    def start(self) -> None:
        """Synchronise, empty the cache, reset the peak and record the allocated bytes."""
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def stop(self) -> int:
        """Peak allocated bytes since start, above the level at start."""
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.base


class JaxDeviceProbe:
    """XLA's GPU allocator; its peak cannot be reset, so it counts from the process's start."""

    def __init__(self, device: torch.device) -> None:
        self.index, self.base = device.index or 0, 0

    def _stats(self) -> dict:
        import jax

        return jax.devices("gpu")[self.index].memory_stats() or {}

    def start(self) -> None:
        """Record XLA's current bytes in use on the device."""
        self.base = self._stats().get("bytes_in_use", 0)

    def stop(self) -> int:
        """XLA's peak bytes in use above the level at start (its peak is since the process started)."""
        return max(self._stats().get("peak_bytes_in_use", 0) - self.base, 0)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: the profiler's C++ side prints a
    "USDT ... profiler_start/stop" line at each start and stop, which buries progress output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TorchCpuProbe:
    """Peak bytes of torch's CPU allocations between start and stop, from the profiler's memory events."""

    def __init__(self) -> None:
        self.profile: torch.profiler.profile | None = None

    def start(self) -> None:
        """Start a memory-profiling torch.profiler session."""
        gc.collect()
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self.profile.__enter__()

    def stop(self) -> int:
        """End the session; the peak of live bytes over its allocation and free events."""
        with _quiet_stderr():
            self.profile.__exit__(None, None, None)
        events = [
            e for e in self.profile.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
        live = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()  # negative for a free
            peak = max(peak, live)
        return peak


class ResidentSetProbe:
    """Peak resident set growth of this process (Linux /proc: VmHWM reset, then VmHWM - VmRSS at start); counts
    every allocator, JAX's on the CPU included.
    """

    def __init__(self) -> None:
        self.base = 0

    @staticmethod
    def _status(field_name: str) -> int:
        with open("/proc/self/status") as status:
            return int(re.search(rf"^{field_name}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024

    def start(self) -> None:
        """Collect garbage, trim malloc, reset the high-water mark and record the resident set."""
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set
        self.base = self._status("VmRSS")

    def stop(self) -> int:
        """Bytes the resident set's high-water mark rose since start."""
        return self._status("VmHWM") - self.base


@dataclass
class Meter:
    """The probes for one case; `window` is "prepare" (from before prepare) or "step" (one step)."""

    window: str
    probes: list = field(default_factory=list)

    def start(self) -> None:
        """Start every probe."""
        for probe in self.probes:
            probe.start()

    def stop(self) -> int:
        """The sum of the probes' peaks, in bytes."""
        return sum(probe.stop() for probe in self.probes)


def meter_for(device: torch.device, framework: str) -> Meter:
    """The probes for a `framework` ('torch' or 'jax') method on `device`: CUDA's allocator (and XLA's for jax)
    from before prepare on a GPU; torch's CPU profiler from before prepare; the resident set over one
    step for jax on the CPU.
    """
    if device.type == "cuda":
        probes = [CudaAllocatorProbe(device)] + ([JaxDeviceProbe(device)] if framework == "jax" else [])
        return Meter("prepare", probes)
    if framework == "torch":
        return Meter("prepare", [TorchCpuProbe()])
    return Meter("step", [ResidentSetProbe()])
