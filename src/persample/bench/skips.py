"""Why a case is skipped on this machine, decided before anything is built (so skipping is cheap).

Rules are data: each looks at the case (and a parameter-free "meta" copy of its model) and returns a
reason or None; the first reason wins. Capabilities come from the methods' own declarations
(`Method.problem`), so asv's skips never go stale.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import Unsupported
from ..workloads import get_workload
from .grid import Case
from ..modes import get_mode
from .providers import provider_for

# Per-sample gradients alone may take this share of the device's memory; beyond it a case would
# only measure the allocator failing (B=4096 of the text classifier needs 51 GB in float32).
MEMORY_SHARE = 0.4
LOOP_MAX_BATCH = 1024


@dataclass(frozen=True)
class Context:
    """A benchmark case and the device it would run on, with its dtype and its model built on the meta device
    (no memory) for the skip rules.
    """

    case: Case
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the case's mode."""
        return get_mode(self.case.mode).dtype

    @property
    def model(self) -> nn.Module:
        """The case's model on the meta device, in the case's dtype."""
        return meta_model(self.case.workload, self.case.size, self.dtype)


Rule = Callable[[Context], "str | None"]


@functools.lru_cache(maxsize=None)
def meta_model(workload: str, size: str, dtype: torch.dtype) -> nn.Module:
    """The workload's model with shapes but no data: enough for capability and size checks."""
    with torch.device("meta"):
        return get_workload(workload).make_model(size).to(dtype=dtype)


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of `device` in bytes: the GPU's, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def variant_exists(context: Context) -> str | None:
    """Why the case's method or variant (e.g. CUDA-graph capture) cannot be built here, or None."""
    try:
        provider_for(context.case)
    except Unsupported as refused:
        return refused.reason
    except ValueError as unknown:  # a plugin method registered on another machine only
        return str(unknown)
    return None


def mode_on_device(context: Context) -> str | None:
    """Why the case's mode is not offered on the device (e.g. TF32 on a CPU), or None."""
    return get_mode(context.case.mode).unsupported_reason(context.device)


def capabilities(context: Context) -> str | None:
    """The reason of the method's declared refusal of the case's model, device and dtype, or None."""
    problem = provider_for(context.case).problem(context.model, context.device, context.dtype)
    return None if problem is None else problem.reason


def interpreted_kernels(context: Context) -> str | None:
    """A method whose time here would mislead (`Method.untimed_reason`: Triton's interpreter)."""
    return provider_for(context.case).untimed_reason()


def loop_cap(context: Context) -> str | None:
    """A skip of `loop` at batch sizes of LOOP_MAX_BATCH (1024) and more, whose time is B times the B=1 time;
    else None.
    """
    case = context.case
    if case.method == "loop" and case.batch_size >= LOOP_MAX_BATCH:
        return f"loop at B>={LOOP_MAX_BATCH} takes minutes; its time is B x the B=1 time"
    return None


def memory_budget(context: Context) -> str | None:
    """Why B per-sample gradients (B x trainable parameters x itemsize bytes) would exceed MEMORY_SHARE (40%)
    of the device's memory, or None; the baseline is never skipped.
    """
    case = context.case
    params = sum(p.numel() for p in context.model.parameters() if p.requires_grad)
    needed = case.batch_size * params * get_mode(case.mode).itemsize
    available = device_memory_bytes(context.device)
    if case.is_baseline or needed <= MEMORY_SHARE * available:
        return None
    return (f"per-sample gradients of {case.batch_size} samples alone need {needed / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of this device's {available / 2**30:.0f} GiB")


RULES: list[Rule] = [variant_exists, mode_on_device, loop_cap, interpreted_kernels, capabilities, memory_budget]


def skip_reason(case: Case, device: torch.device) -> str | None:
    """The first rule's reason to skip `case` on `device`, or None when it should run."""
    context = Context(case, device)
    for rule in RULES:
        reason = rule(context)
        if reason:
            return reason
    return None
