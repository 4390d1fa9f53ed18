"""`check`: every method on the user's own model, judged and measured (see the package docstring)."""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .. import recommendations
from ..batch import Inputs
from ..bench.providers import Baseline
from ..contract import LossFn
from ..errors import LossNotPerSample, Unsupported
from ..machine import cpu_model, machine_name
from ..methods.base import Method
from ..methods.registry import get, load_object, registered
from ..modes import mode_name, tolerance_for
from .coupling import coupling, reference_coupling
from .judge import CORRECT, UNJUDGED, Judgement, judge, reference_for
from .measure import FULL, QUICK, Measurement, available_bytes, measure, too_big
from .report import CheckReport, MethodResult
from .subject import Subject, Variant

Progress = Callable[[str], None]
REFERENCE_COUPLING = 1e-7  # Σᵢ gᵢ against the batch gradient, both float64: rounding is ~1e-14; a coupling ≫ 1e-7


def check(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    methods: Iterable[str | Method] | None = None,
    dtypes: Iterable[torch.dtype | str] | None = None,
    device: torch.device | str | None = None,
    batch_sizes: Iterable[int] | None = None,
    quick: bool = False,
    record: bool = True,
    progress: Progress | None = None,
    name: str | None = None,
) -> CheckReport:
    """Judge and measure every method on the user's own model and batch.

    For each dtype (default: the model's, plus bfloat16 on a GPU) and method (default: every
    registered one, ours and the peers; `methods` may name registered methods, `Method` objects or
    'module:object' specs, which are loaded): the per-sample gradients on the user's batch against
    the float64 loop (`persample.reference`), the invariants (`persample.modelcheck.invariants`),
    then, for methods that are correct and whose time means something here, time per step
    (median and quartiles) and peak memory at each batch size (default: B/4, B and 4B resampled from
    the user's rows; `quick`: B only, three samples), capped by memory and step time.

    The user's model is used as is where dtype and device are its own, and a copy elsewhere; it is
    left as found (a method that changes it is reported wrong). With `record`, each dtype's ranking
    is kept in the local cache (`persample.recommendations.local_cache`), where `auto` finds it for
    models of the same structure. `progress` receives one line per step.

    Returns a `CheckReport`. Raises `TypeError`/`ValueError` for unusable input (a random forward,
    targets that do not match the batch), `LossNotPerSample` for a loss that is not per sample.
    """
    with torch.enable_grad():  # a caller's torch.no_grad() must not reach the methods or the reference
        return _check(model, inputs, targets, loss_fn, methods, dtypes, device, batch_sizes, quick, record, progress, name)


def _check(model, inputs, targets, loss_fn, methods, dtypes, device, batch_sizes, quick, record, progress, name) -> CheckReport:
    began = time.perf_counter()
    subject = Subject.of(model, inputs, targets, loss_fn, name)
    device = _device(device, subject)
    chosen = _methods(methods)
    dtype_list = _dtypes(dtypes, subject, device)
    sizes = _batch_sizes(batch_sizes, subject.call.batch_size, quick)
    say = progress or (lambda line: None)
    everyone = {n for n, m in registered().items() if not m.capabilities.chooser}
    complete = everyone <= {method.name for method, _ in chosen}  # a ranking of some methods must not steer auto
    subject.check_deterministic()
    coupled = coupling(subject.model, subject.call, subject.targets, subject.loss_fn)
    if coupled:
        say(f"note: {coupled}")
    free = available_bytes(device)
    report = CheckReport(
        model=subject.name, parameters=subject.parameter_count,
        structure=recommendations.structure_key(subject.model, subject.call), device=device.type,
        machine=machine_name(device), hardware=_hardware(device), batch_size=subject.call.batch_size,
        batch_sizes=sizes, dtypes=[mode_name(d) for d in dtype_list], references={}, baseline={}, results=[],
        quick=quick, created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    budget = QUICK if quick else FULL
    total, done = len(dtype_list) * len(chosen), 0
    for dtype in dtype_list:
        mode = mode_name(dtype)
        variant = subject.variant(dtype, device)
        say(f"{mode}: reference (loop in float64) ...")
        reference = reference_for(variant)
        report.references[mode] = reference.description
        coupled_here = coupled or _reference_coupling(variant, reference)
        if coupled_here and not coupled:
            say(f"note: {mode}: {coupled_here}")
            report.notes.append(f"{mode}: {coupled_here}; the invariant 'Σᵢ gᵢ equals the batch gradient' is not checked")
        if reference.refusal:
            report.notes.append(f"{mode}: every method should refuse this model, as the reference does: {reference.refusal}")
        say(f"{mode}: baseline (one backward of the mean loss) at B={', '.join(map(str, sizes))} ...")
        report.baseline[mode] = _measure_sizes(Baseline(), variant, sizes, budget, free)
        for method, kind in chosen:
            done += 1
            say(f"[{done}/{total}] {mode} {method.name}: judging ...")
            judgement = judge(method, variant, reference, coupled_here)
            result = _result(method, kind, mode, judgement)
            if judgement.status in (CORRECT, UNJUDGED):
                result.untimed = method.untimed_reason() or ""
                if not result.untimed:
                    say(f"[{done}/{total}] {mode} {method.name}: {judgement.status}; timing ...")
                    result.measurements = _measure_sizes(method, variant, sizes, budget, free)
            say(f"[{done}/{total}] {mode} {method.name}: {_line(result, report)}")
            report.results.append(result)
        if record and complete:
            _record(report, subject, variant, mode)
        report.auto[mode] = _auto(variant)
    if coupled:
        report.notes.append(f"{coupled}; the invariant 'Σᵢ gᵢ equals the batch gradient' is not checked")
    report.notes += _notes(report, subject, device)
    if record and not complete:
        report.notes.append("the ranking was not kept for method='auto': only some methods were checked (check them all to keep it)")
    report.seconds = time.perf_counter() - began
    return report


def _reference_coupling(variant: Variant, reference) -> str | None:
    """Whether the reference itself says the samples are coupled (`coupling.reference_coupling`):
    float64 rounding when the reference is float64, else the variant dtype's tolerance."""
    if reference.grads is None:
        return None
    float64 = next(iter(reference.grads.values())).dtype == torch.float64
    return reference_coupling(variant, reference.grads, REFERENCE_COUPLING if float64 else tolerance_for(variant.dtype).relative)


def _device(device, subject: Subject) -> torch.device:
    if device is None:
        return subject.device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA device here (torch {torch.__version__}); "
                         "leave device out to check where the model is")
    return device


def _methods(methods) -> list[tuple[Method, str]]:
    """(method, kind) for each method to check: built-in or peer by its capabilities; a method
    loaded from a spec or passed as an object and not built in is the user's ("plugin")."""
    available = {n: m for n, m in registered().items() if not m.capabilities.chooser}
    if methods is None:
        return [(m, _kind(m)) for m in available.values()]
    if isinstance(methods, (str, Method)):
        methods = [methods]
    chosen = []
    for entry in methods:
        if isinstance(entry, Method):
            method = entry
        elif isinstance(entry, str) and ":" in entry:
            method = load_object(entry)
        else:
            method = get(entry)
        if method.capabilities.chooser:
            raise ValueError(f"{method.name!r} chooses another method per model; check the methods it chooses from")
        if any(other.name == method.name for other, _ in chosen):
            raise ValueError(f"two methods named {method.name!r}: give each its own capabilities.name")
        chosen.append((method, _kind(method)))
    if not chosen:
        raise ValueError("no methods to check: leave methods out to check every method available here")
    return chosen


def _kind(method: Method) -> str:
    if method.capabilities.peer:
        return "peer"
    return "ours" if type(method).__module__.startswith("persample.") else "plugin"


def _dtypes(dtypes, subject: Subject, device: torch.device) -> list[torch.dtype]:
    if dtypes is None:
        found = [subject.dtype]
        if device.type == "cuda" and torch.bfloat16 not in found:
            found.append(torch.bfloat16)
        return found
    result = []
    for dtype in [dtypes] if isinstance(dtypes, (str, torch.dtype)) else dtypes:
        if isinstance(dtype, str):
            parsed = getattr(torch, dtype.removeprefix("torch."), None)
            if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
                raise ValueError(f"unknown floating dtype {dtype!r}; use float32, float64, bfloat16 or float16")
            dtype = parsed
        tolerance_for(dtype)  # raises for a dtype without a tolerance
        result.append(dtype)
    return list(dict.fromkeys(result))


def _batch_sizes(batch_sizes, rows: int, quick: bool) -> list[int]:
    if batch_sizes is not None:
        given = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes)
        if not given or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in given):
            raise ValueError(f"batch sizes must be positive integers; got {batch_sizes!r}")
        return sorted(set(given))
    return [rows] if quick else sorted({max(1, rows // 4), rows, 4 * rows})


def _measure_sizes(method: Method, variant: Variant, sizes: list[int], budget, free) -> list[Measurement]:
    measured: list[Measurement] = []
    previous = None
    for size in sizes:
        why = too_big(previous, size, free)
        measurement = Measurement(size, skipped=why) if why else measure(method, variant, size, budget)
        measured.append(measurement)
        if measurement.median_s is not None:
            previous = measurement
        elif not why and measurement.skipped == "out of memory":
            break  # larger sizes would not fit either
    return measured


def _result(method: Method, kind: str, mode: str, judgement: Judgement) -> MethodResult:
    tolerance = judgement.tolerance
    return MethodResult(
        method=method.name, kind=kind, dtype=mode, status=judgement.status, reason=judgement.reason,
        max_relative=judgement.max_relative, max_per_sample=judgement.max_per_sample,
        tolerance_relative=tolerance.relative if tolerance else None,
        tolerance_per_sample=tolerance.per_sample if tolerance else None,
        invariants=judgement.invariants, unchecked=judgement.unchecked,
    )


def _line(result: MethodResult, report: CheckReport) -> str:
    own = result.at(report.ranked_at)
    timed = f", {own.median_s * 1e3:.3g} ms at B={report.ranked_at}" if own and own.median_s else ""
    return f"{result.status}{timed}"


def _record(report: CheckReport, subject: Subject, variant: Variant, mode: str) -> None:
    rankings = {b: report.fastest(mode, b) for b in report.batch_sizes}
    rankings = {b: r for b, r in rankings.items() if r}
    if rankings:
        key = recommendations.structure_key(variant.model, variant.call)
        recommendations.record_checked(key, f"{subject.name} ({subject.parameter_count:,} parameters)",
                                       report.machine, report.device, mode, rankings)


def _auto(variant: Variant) -> str:
    """What `auto` resolves to now for this model and batch, and what decided it."""
    from ..selection import explain_choice

    try:
        choice = explain_choice(variant.model, variant.device, variant.dtype, variant.call.batch_size,
                                example_batch=(variant.call.to_user(), variant.targets), loss_fn=variant.loss_fn)
    except (Unsupported, LossNotPerSample) as refused:
        return f"refuses: {refused}"
    except Exception as error:  # noqa: BLE001 (auto's own failure must not lose the report)
        return f"fails: {type(error).__name__}: {error}"
    return f"{choice.method.name} ({choice.basis})"


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _notes(report: CheckReport, subject: Subject, device: torch.device) -> list[str]:
    notes = []
    if subject.call.batch_size < 3:
        notes.append("with fewer than three samples, 'changing one sample leaves the others unchanged' is not checked")
    if device.type == "cpu":
        notes.append("no GPU here: times are CPU times; a GPU ranks methods differently (see the report's GPU results)")
        from ..bench.timing import CPU_THREADING_ENV, threading_env

        spinning = {k: v for k, v in threading_env().items() if k in CPU_THREADING_ENV}
        if spinning:
            notes.append(f"OpenMP threads spin here ({', '.join(f'{k}={v}' for k, v in spinning.items())} is not set): on "
                         "a small VM that can add tens of milliseconds to a step; set it before Python starts "
                         "(`persample check` does)")
    untimed = sorted({r.method for r in report.results if r.untimed})
    if untimed:
        notes.append(f"checked for correctness only, not timed: {', '.join(untimed)}")
    return notes
