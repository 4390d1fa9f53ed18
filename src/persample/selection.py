"""`method="auto"`: the fastest method that is conformant for this model on this device.

Measured data first. The data is the report's (`persample.report.recommend`): per machine, dtype,
workload and batch size, the methods that ran and pass conformance there, fastest first. It is read
from the reports directory `$PERSAMPLE_RESULTS` names (else `./reports/`) when it holds a
`results.csv`, otherwise from the summary shipped in the package
(`persample/report/recommendations.json`). The rule:

1. machine: one with the same device type, preferring this one (same GPU model on CUDA, same CPU
   slug on the CPU); dtype: the same compute mode ("tf32" for float32 with TF32 matmuls on CUDA,
   falling back to "float32" data);
2. workload: the zoo workload measured there nearest to the model (same parameter-owning layer
   types first, frozen ones marked, then the nearest parameter count; `persample.report.signature`);
   batch size: the nearest measured one on a log scale (without one, the middle of those measured);
3. the first method of that case's ranking that registers here and passes `method.check`.

Without measured data, or when no ranked method can run the model, the documented rule (README,
"Which method does auto pick?"): on CUDA prefer `kernel`, then `vmap`; on the CPU prefer `hooks`,
then `vmap`; `loop` is the last resort because it supports everything (`FALLBACK_ORDER`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .errors import Unsupported
from .methods.registry import Method, registered
from .reference import mode_name

FALLBACK_ORDER = {
    "cuda": ("kernel", "vmap", "hooks", "expand", "loop"),
    "cpu": ("hooks", "vmap", "expand", "loop"),
}


@dataclass(frozen=True)
class Choice:
    """The method `auto` picked and why (the measured case it follows, or the fallback rule)."""

    method: Method
    basis: str


def choose_method(
    model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int | None = None
) -> Method:
    """The method `auto` resolves to for `model` on `device` in `dtype`."""
    return explain_choice(model, device, dtype, batch_size).method


def explain_choice(
    model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int | None = None
) -> Choice:
    """The method `auto` resolves to, with the measured case or the rule that decided it."""
    try:
        measured = measured_choice(model, device, dtype, batch_size)
    except (OSError, ValueError, KeyError, TypeError):  # unreadable data must not break auto
        measured = None
    return measured or fallback_choice(model, device, dtype)


def measured_choice(
    model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int | None
) -> Choice | None:
    """The choice from measured data, or None when there is none that fits."""
    from .report.signature import signature_of
    from .report.summary import cases, current

    summary, origin = current()
    methods = registered()
    signature = signature_of(model)
    for machine_name, machine in _machines(summary, device):
        for mode in _modes(device, dtype):
            case = _nearest_case(summary, cases(machine, mode), signature, batch_size)
            if case is None:
                continue
            for name in case.ranking:
                method = methods.get(name)
                if method is not None and method.problem(model, device, dtype) is None:
                    basis = (f"measured: {name} is the fastest conformant method that runs this model for "
                             f"{case.workload} ({case.size}), batch {case.batch_size}, {mode} on {machine_name} ({origin})")
                    return Choice(method, basis)
    return None


def _nearest_case(summary: dict, measured: list, signature, batch_size: int | None):
    """The measured case nearest to the model: its workload first, then its batch size."""
    from .report.signature import Signature, nearest

    known = summary.get("workloads", {})
    candidates = {
        (case.workload, case.size): Signature.from_json(known[case.workload][case.size])
        for case in measured
        if case.size in known.get(case.workload, {})
    }
    if not candidates:
        return None
    workload = nearest(signature, candidates)
    return _nearest_batch([case for case in measured if (case.workload, case.size) == workload], batch_size)


def fallback_choice(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Choice:
    """The first method of `FALLBACK_ORDER` for the device that can run the model."""
    methods = registered()
    order = FALLBACK_ORDER.get(device.type, FALLBACK_ORDER["cpu"])
    reasons = []
    for name in order:
        method = methods.get(name)
        if method is None:
            continue
        try:
            method.check(model, device, dtype)
        except Unsupported as problem:
            reasons.append(str(problem))
            continue
        return Choice(method, f"fallback rule for {device.type}: {' > '.join(order)} (no measured case fits)")
    raise Unsupported("no method can handle this model: " + "; ".join(reasons), method="auto")


def _modes(device: torch.device, dtype: torch.dtype) -> list[str]:
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    mode = mode_name(dtype, tf32)
    return [mode, "float32"] if mode == "tf32" else [mode]


def _machines(summary: dict, device: torch.device) -> list[tuple[str, dict]]:
    """Measured machines of this device type, this very machine (or GPU model) first."""
    same_type = [(name, m) for name, m in sorted(summary.get("machines", {}).items()) if m.get("device") == device.type]
    here = _this_machine(device)
    return sorted(same_type, key=lambda item: here not in (item[0], item[1].get("gpu")))


@lru_cache(maxsize=None)
def _this_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .machine import cpu_model, cpu_slug

    return cpu_slug(cpu_model(), os.cpu_count())


def _nearest_batch(measured: list, batch_size: int | None):
    """Nearest on a log scale (ties: the larger); without a batch size, the middle one."""
    ordered = sorted(measured, key=lambda case: case.batch_size)
    if batch_size is None:
        return ordered[(len(ordered) - 1) // 2]
    return min(reversed(ordered), key=lambda case: abs(math.log(max(case.batch_size, 1) / max(batch_size, 1))))
