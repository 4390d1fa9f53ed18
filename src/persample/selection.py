"""`method="auto"`: the fastest method that is right for this model on this device.

The candidates, in order:
1. measured data first (`persample.recommendations`: the packaged summary, this machine's local
   cache, `$PERSAMPLE_RECOMMENDATIONS`). A ranking `persample check` measured for a model of the
   same structure and inputs on a machine of this device type (this one preferred) comes first;
   else the report's: per machine, mode, workload and batch size, the methods that ran and pass
   conformance there, fastest first, for a machine with the same device type (this one
   preferred), the same compute mode, the zoo workload nearest to the model (same parameter-owning
   layer types first, then the nearest parameter count) and the nearest measured batch size on a
   log scale;
2. then the documented rule (README, "Which method does auto pick?"): on CUDA `kernel`, then
   `vmap`; on the CPU `hooks`, then `vmap` (`FALLBACK_ORDER`); then our other methods, the peers,
   and `loop` last, since it runs every model.
A candidate is passed over when its declared refusals apply to the model, when a known deviation
of it applies to the model's features (`persample.deviations`), or, given the example batch, when
its preparation refuses (its checks, the loss, the device). `explain_choice` says which case or
rule decided and why each earlier candidate was passed over.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from . import recommendations
from .assumptions import MATCHES_DEFINITION
from .batch import CallArgs
from .deviations import deviations_applying
from .errors import LossNotPerSample, Unsupported
from .methods.base import Method, PreparedStep
from .methods.registry import registered
from .modes import mode_name

FALLBACK_ORDER = {
    "cuda": ("kernel", "vmap", "hooks", "expand", "jax"),
    "cpu": ("hooks", "vmap", "expand", "jax"),
}


@dataclass
class Choice:
    """The method `auto` picked, why, and why each earlier candidate was passed over."""

    method: Method
    basis: str
    passed_over: list[str] = field(default_factory=list)
    step: PreparedStep | None = None

    def describe(self) -> str:
        """One line: the method chosen, on what basis, and the methods passed over with why."""
        over = "; ".join(self.passed_over)
        return f"{self.method.name} ({self.basis})" + (f"; passed over: {over}" if over else "")


def candidates(model: nn.Module, device: torch.device, dtype: torch.dtype,
               batch_size: int | None = None, call: CallArgs | None = None) -> tuple[list[str], str]:
    """Method names in the order `auto` tries them, and what decided the front of the order."""
    methods = {name: m for name, m in registered().items() if not m.capabilities.chooser}
    try:
        measured, basis = checked_ranking(model, call, device, dtype, batch_size) if call is not None else ([], "")
        if not measured:
            measured, basis = measured_ranking(model, device, dtype, batch_size)
    except (OSError, ValueError, KeyError, TypeError):  # unreadable data must not break auto
        measured, basis = [], ""
    order = FALLBACK_ORDER.get(device.type, FALLBACK_ORDER["cpu"])
    if not measured:
        basis = f"fallback rule for {device.type}: {' > '.join(order)} (no measured case fits)"
    ours = [n for n, m in methods.items() if not m.capabilities.peer and not m.capabilities.reference]
    peers = [n for n, m in methods.items() if m.capabilities.peer]
    guarded = [n for n in measured if n in methods and methods[n].capabilities.checks_itself]
    # methods that guard themselves on every call first: a peer, checked on the example batch only, would
    # need autograd's batch gradient on every call (see methods/auto.py), which its measured time leaves out
    ranked = [*guarded, *order, *ours, *measured, *peers, *(n for n, m in methods.items() if m.capabilities.reference)]
    return [n for i, n in enumerate(ranked) if n in methods and n not in ranked[:i]], basis


def explain_choice(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int | None = None,
    *,
    example_batch=None,
    loss_fn=None,
) -> Choice:
    """The method `auto` resolves to, with the case or rule that decided it and the candidates
    passed over. Given `example_batch` (inputs, targets), each candidate is also prepared on it
    (its checks run) and the prepared step is returned in `Choice.step`."""
    call = CallArgs.of(example_batch[0]) if example_batch is not None else None
    names, basis = candidates(model, device, dtype, batch_size, call)
    methods = registered()
    passed_over: list[str] = []
    failures: list[Exception] = []
    assumptions: set[str | None] = set()
    for name in names:
        method = methods[name]
        problem = _static_problem(method, model, device, dtype)
        if problem is None:
            deviations = deviations_applying(name, model)
            if deviations:
                problem = (f"known deviation: {deviations[0].reason}", MATCHES_DEFINITION.id)
        if problem is not None:
            passed_over.append(f"{name}: {problem[0]}")
            assumptions.add(problem[1])
            continue
        if example_batch is None:
            return Choice(method, basis, passed_over)
        try:
            step = verified_step(method, model, loss_fn, example_batch)
        except LossNotPerSample:
            raise
        except Unsupported as refused:
            passed_over.append(f"{name}: {refused.reason}")
            assumptions.add(refused.assumption)
            continue
        except Exception as error:  # a candidate that breaks hands over to the next
            failures.append(error)
            passed_over.append(f"{name}: failed while preparing ({type(error).__name__}: {error})")
            continue
        return Choice(method, basis, passed_over, step)
    if failures:
        raise failures[0]
    shared = assumptions.pop() if len(assumptions) == 1 else None
    raise Unsupported("no method can handle this model: " + "; ".join(passed_over), method="auto", assumption=shared)


def choose_method(model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int | None = None) -> Method:
    """The method `auto` resolves to for `model` on `device` in `dtype` (static checks only)."""
    return explain_choice(model, device, dtype, batch_size).method


def _static_problem(method: Method, model: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[str, str | None] | None:
    try:
        problem = method.problem(model, device, dtype)
    except Exception as error:  # a method whose own check breaks cannot be chosen
        return f"its capability check failed ({type(error).__name__}: {error})", None
    return None if problem is None else (problem.reason, problem.assumption)


def verified_step(method: Method, model: nn.Module, loss_fn, example_batch) -> PreparedStep:
    """The method's prepared step; a method without checks of its own (a peer, a plugin) is first
    held to the definition on the example batch (`checks.verify_answer`). Raises what they raise."""
    from .checks import CheckContext, verify_answer
    from .contract import default_loss

    step = method.prepare(model, loss_fn, example_batch)
    if not method.capabilities.checks_itself:
        call, targets = example_batch
        verify_answer(CheckContext(method.name, model, loss_fn or default_loss, CallArgs.of(call), targets), method)
    return step


def checked_ranking(
    model: nn.Module, call: CallArgs, device: torch.device, dtype: torch.dtype, batch_size: int | None
) -> tuple[list[str], str]:
    """The ranking `persample check` measured for a model of this structure and inputs, this machine
    first, at the nearest batch size; and a sentence saying so."""
    summary, origin = recommendations.current()
    from .machine import machine_name

    here = machine_name(device)
    modes = _modes(device, dtype)
    found = [c for c in recommendations.checked_cases(summary, recommendations.structure_key(model, call), device.type)
             if c.mode in modes]
    if not found:
        return [], ""
    ours = [c for c in found if c.machine == here] or found
    case = recommendations.nearest_batch(ours, batch_size)
    return list(case.ranking), (f"checked: `persample check` measured this model's structure at batch {case.batch_size}, "
                                f"{case.mode} on {case.machine} ({origin})")


def measured_ranking(
    model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int | None
) -> tuple[list[str], str]:
    """The ranking of the nearest measured case, and a sentence saying which case it is."""
    summary, origin = recommendations.current()
    signature = recommendations.signature_of(model)
    for machine_name, machine in _machines(summary, device):
        for mode in _modes(device, dtype):
            case = _nearest_case(summary, recommendations.cases(machine, mode), signature, batch_size)
            if case is not None:
                basis = (f"measured: fastest conformant methods for {case.workload} ({case.size}), batch "
                         f"{case.batch_size}, {mode} on {machine_name} ({origin})")
                return list(case.ranking), basis
    return [], ""


def _nearest_case(summary: dict, measured: list, signature, batch_size: int | None):
    """The measured case nearest to the model: its workload first, then its batch size."""
    known = summary.get("workloads", {})
    options = {
        (case.workload, case.size): recommendations.Signature.from_json(known[case.workload][case.size])
        for case in measured
        if case.size in known.get(case.workload, {})
    }
    if not options:
        return None
    workload = recommendations.nearest(signature, options)
    return recommendations.nearest_batch([case for case in measured if (case.workload, case.size) == workload], batch_size)


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
