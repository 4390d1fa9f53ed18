"""Time and peak memory of one method's prepared step at one batch size, on the user's model.

Timing: the step prepared once (its checks are a one-time cost, not timed), warmed up, then run
until `Budget.repeats` samples or `Budget.seconds`; each sample ends with a device synchronize
(`persample.bench.timing`). Peak memory: bytes above model and batch (`persample.bench.memory`),
from before prepare through the first step on a GPU, around one step on the CPU for JAX.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..bench.memory import meter_for
from ..bench.timing import synchronize, warm_up
from ..methods.base import Method
from ..state import restored_after
from .subject import Variant

MEMORY_SHARE = 0.5  # of the memory available when the check starts: what a batch size may be estimated to use
STEP_CAP_S = 20.0  # a batch size whose step is estimated longer than this is left out (the loop at 4B, say)


@dataclass(frozen=True)
class Budget:
    """How long each (method, batch size) is sampled: at least `min_repeats`, at most `repeats`
    samples, stopping after `seconds` once `min_repeats` are in."""

    repeats: int
    min_repeats: int
    seconds: float


FULL = Budget(repeats=15, min_repeats=5, seconds=1.0)
QUICK = Budget(repeats=3, min_repeats=3, seconds=0.3)


@dataclass
class Measurement:
    """One method at one batch size: time per step (median and quartiles, seconds) and peak bytes;
    or, with `skipped`, why it was not measured there."""

    batch_size: int
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    samples: int = 0
    peak_bytes: int | None = None
    skipped: str = ""

    @property
    def spread_s(self) -> float | None:
        """Half the interquartile range (seconds)."""
        return None if self.q1_s is None else (self.q3_s - self.q1_s) / 2


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` now (the GPU's free memory, or the system's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(method: Method, variant: Variant, batch_size: int, budget: Budget) -> Measurement:
    """Prepare `method` on a batch of `batch_size` and measure it; an `Unsupported` at this size,
    running out of memory, or any other error becomes `skipped` with the reason. The model is put
    back as it was afterwards."""
    with restored_after(variant.model):
        return _measure(method, variant, batch_size, budget)


def _measure(method: Method, variant: Variant, batch_size: int, budget: Budget) -> Measurement:
    call, targets = variant.batch(batch_size)
    inputs = call if method.takes_call_args else call.to_user()
    meter = meter_for(variant.device, method.capabilities.framework)
    result = Measurement(batch_size)
    try:
        if meter.window == "prepare":
            meter.start()
        step = method.prepare(variant.model, variant.loss_fn, (inputs, targets))

        def run() -> None:
            step(inputs, targets)
            synchronize(variant.device)

        if meter.window == "prepare":
            run()
            result.peak_bytes = meter.stop()
        warm_up(run)
        if meter.window == "step":
            meter.start()
            run()
            result.peak_bytes = meter.stop()
        samples = _sample(run, budget)
    except torch.OutOfMemoryError:
        result.skipped = "out of memory"
        return result
    except Exception as error:  # noqa: BLE001 (an Unsupported at this size, a crash: reported)
        result.skipped = f"{type(error).__name__}: {error}"
        return result
    quartiles = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    result.q1_s, result.median_s, result.q3_s = quartiles
    result.samples = len(samples)
    return result


def _sample(run, budget: Budget) -> list[float]:
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < budget.min_repeats or (
        len(samples) < budget.repeats and time.perf_counter() - start < budget.seconds
    ):
        began = time.perf_counter()
        run()
        samples.append(time.perf_counter() - began)
    return samples


def too_big(previous: Measurement | None, batch_size: int, free_bytes: int | None) -> str:
    """Why `batch_size` is left out, extrapolating linearly from the last measured size; "" if not."""
    if previous is None or previous.median_s is None:
        return ""
    scale = batch_size / previous.batch_size
    if free_bytes is not None and previous.peak_bytes and previous.peak_bytes * scale > MEMORY_SHARE * free_bytes:
        return (f"estimated {previous.peak_bytes * scale / 2**20:,.0f} MiB exceeds the memory cap "
                f"({MEMORY_SHARE:.0%} of the {free_bytes / 2**20:,.0f} MiB free at the start)")
    if previous.median_s * scale > STEP_CAP_S:
        return f"estimated {previous.median_s * scale:.0f} s per step exceeds the {STEP_CAP_S:.0f} s cap"
    return ""
