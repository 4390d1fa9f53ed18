"""What `method="auto"` knows from measurements: the summary's schema, where it is read from, and
how a model is matched to a measured case.

The summary (schema `persample.recommendations/1`) holds, per machine, compute mode, zoo workload,
size and batch size, the methods that ran and passed conformance there, fastest first
(`machines`); each measured workload's signature (`workloads`); and the rankings `persample check`
measured for users' own models, keyed by their structure (`checked`).

Where it is read from, explicitly and in this order of precedence (a later source's machines and
checked models replace an earlier one's; the current directory is never read by accident):
1. the summary shipped in the package (`persample/report/recommendations.json`);
2. the local cache (`local_cache()`: `$PERSAMPLE_CACHE`, else `$XDG_CACHE_HOME/persample`, else
   `~/.cache/persample`), which `persample report` and `persample check` write on this machine, so
   a local measurement wins over the packaged one;
3. `$PERSAMPLE_RECOMMENDATIONS`: a summary file, or a reports directory holding one.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from torch import nn

from .batch import CallArgs
from .contract import trainable_owners

SCHEMA = "persample.recommendations/1"
FILE_NAME = "recommendations.json"
PACKAGED = Path(__file__).parent / "report" / FILE_NAME
ENV_VAR = "PERSAMPLE_RECOMMENDATIONS"
CACHE_VAR = "PERSAMPLE_CACHE"
RANKING_LENGTH = 5
FLAT_LIST = re.compile(r"\[\n\s*([^\[\]{}]*?)\n\s*\]")  # a list of scalars, to be written on one line
DECADE_WEIGHT = 0.1
K = TypeVar("K")


def empty() -> dict:
    """A summary with nothing in it: the current schema, no machines, workloads or checked rankings."""
    return {"schema": SCHEMA, "machines": {}, "workloads": {}, "checked": {}}


class RecommendedCase(NamedTuple):
    """One measured case of the report's ranking: a zoo workload, its size, the batch size and the conformant
    methods, fastest first.
    """

    workload: str
    size: str
    batch_size: int
    ranking: list[str]


def cases(machine: dict, mode: str) -> list[RecommendedCase]:
    """A machine's measured zoo cases in `mode`, flattened."""
    return [
        RecommendedCase(workload, size, int(batch), ranking)
        for workload, sizes in machine.get("cases", {}).get(mode, {}).items()
        for size, batches in sizes.items()
        for batch, ranking in batches.items()
    ]


# ---- where the summary lives -------------------------------------------------------------------


def local_cache() -> Path:
    """The directory this machine's own measurements are kept in (created on first write)."""
    if os.environ.get(CACHE_VAR):
        return Path(os.environ[CACHE_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "persample"


def sources() -> list[Path]:
    """The summary files read, lowest precedence first (see the module docstring)."""
    found = [PACKAGED, local_cache() / FILE_NAME]
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured)
        found.append(path / FILE_NAME if path.is_dir() else path)
    return found


def read(path: Path) -> dict:
    """The summary in `path` (empty when absent, unreadable or of another schema)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return empty()
    if payload.get("schema") != SCHEMA:
        return empty()
    return {**empty(), **payload}


def current() -> tuple[dict, str]:
    """The merged summary `auto` uses, and the files it came from (for `explain_choice`)."""
    files = [p for p in sources() if p.is_file()]
    stamps = tuple((str(p), p.stat().st_mtime_ns) for p in files)
    return _merged(stamps), ", ".join(str(p) for p in files) or "no measurements"


@lru_cache(maxsize=4)
def _merged(stamps: tuple) -> dict:
    merged = empty()
    for path, _ in stamps:
        merged = merge(merged, read(Path(path)))
    return merged


def merge(existing: dict, new: dict) -> dict:
    """`new`'s machines and checked models replace the same ones in `existing`; the rest is kept."""
    merged = {**empty(), "created": new.get("created", existing.get("created"))}
    merged["machines"] = {**existing.get("machines", {}), **new.get("machines", {})}
    merged["checked"] = {**existing.get("checked", {}), **new.get("checked", {})}
    merged["workloads"] = {}
    for source in (existing, new):
        for workload, sizes in source.get("workloads", {}).items():
            merged["workloads"].setdefault(workload, {}).update(sizes)
    return merged


def write(summary: dict, path: Path, *, merge_existing: bool = False) -> Path:
    """Write `summary` to `path` (merged into what is there if asked)."""
    path = Path(path)
    if merge_existing and path.is_file():
        summary = merge(read(path), summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**empty(), **summary}, indent=1, sort_keys=True)
    path.write_text(FLAT_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n")
    _merged.cache_clear()
    return path


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---- matching a model to a measured zoo workload -----------------------------------------------


@dataclass(frozen=True)
class Signature:
    """A model's parameter-owning layer types (marked when frozen) and total parameter count.

    Distance = Jaccard distance of the type sets + 0.1 per decade of parameter-count ratio, so
    sharing the layer vocabulary outweighs a size that is off by several orders of magnitude.
    """

    layers: frozenset[str]
    parameters: int

    def distance(self, other: Signature) -> float:
        """How far two models' structures are: the Jaccard distance of their layer-type sets plus DECADE_WEIGHT
        (0.1) per decade between their trainable parameter counts; 0 for equal signatures.
        """
        union = self.layers | other.layers
        jaccard = 1.0 - len(self.layers & other.layers) / len(union) if union else 0.0
        decades = abs(math.log10(max(self.parameters, 1)) - math.log10(max(other.parameters, 1)))
        return jaccard + DECADE_WEIGHT * decades

    def to_json(self) -> dict:
        """{'layers': sorted layer types, 'parameters': trainable parameter count}."""
        return {"layers": sorted(self.layers), "parameters": self.parameters}

    @classmethod
    def from_json(cls, payload: dict) -> Signature:
        """The signature stored as `to_json` wrote it."""
        return cls(frozenset(payload["layers"]), int(payload["parameters"]))


def signature_of(model: nn.Module) -> Signature:
    """The model's layer types ("Conv2d", or "Conv2d (frozen)" when all its parameters are frozen)
    and its total parameter count."""
    trainable = {id(module) for _, module in trainable_owners(model)}
    layers = frozenset(
        type(module).__name__ + ("" if id(module) in trainable else " (frozen)")
        for module in model.modules()
        if next(module.parameters(recurse=False), None) is not None
    )
    return Signature(layers, sum(p.numel() for p in model.parameters()))


@lru_cache(maxsize=None)
def workload_signature(name: str, size: str) -> Signature | None:
    """The zoo workload's signature (its model built once per process), or None if unknown."""
    from .workloads import get_workload

    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: draws random numbers
            model = get_workload(name).make_model(size or "full")
    except (ValueError, KeyError):
        return None
    return signature_of(model)


def nearest(signature: Signature, candidates: dict[K, Signature]) -> K | None:
    """The candidate key nearest to `signature` (ties: the first in sorted key order)."""
    if not candidates:
        return None
    return min(sorted(candidates), key=lambda name: signature.distance(candidates[name]))


def nearest_batch(measured: list, batch_size: int | None):
    """The entry (with a `batch_size`) nearest on a log scale (ties: the larger); without a batch
    size, the middle one."""
    ordered = sorted(measured, key=lambda case: case.batch_size)
    if batch_size is None:
        return ordered[(len(ordered) - 1) // 2]
    return min(reversed(ordered), key=lambda case: abs(math.log(max(case.batch_size, 1) / max(batch_size, 1))))


# ---- models checked by `persample check` -------------------------------------------------------


def structure_key(model: nn.Module, call: CallArgs) -> str:
    """What a checked ranking applies to: the module tree (names, types, each parameter's shape,
    dtype and requires_grad) and the inputs (names, shapes without the batch, dtypes)."""
    parts = []
    for name, module in model.named_modules():
        params = ",".join(
            f"{local}{tuple(p.shape)}{p.dtype}{p.requires_grad}" for local, p in module._parameters.items() if p is not None
        )
        parts.append(f"{name}:{type(module).__qualname__}:{params}")
    parts += [f"input {name}{tuple(t.shape[1:])}{t.dtype}" for name, t in call.tensors()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def record_checked(key: str, description: str, machine: str, device: str, mode: str, rankings: dict[int, list[str]],
                   path: Path | None = None) -> Path:
    """Keep a checked model's rankings (batch size -> methods, fastest first) for `auto`, in the
    local cache unless `path` says otherwise."""
    entry = {"description": description, "created": now(), "runs": {
        f"{machine}|{mode}": {"machine": machine, "device": device, "mode": mode,
                              "batches": {str(b): r[:RANKING_LENGTH] for b, r in rankings.items()}}}}
    target = path or local_cache() / FILE_NAME
    existing = read(target) if target.is_file() else empty()
    previous = existing.get("checked", {}).get(key, {})
    entry["runs"] = {**previous.get("runs", {}), **entry["runs"]}
    return write({**existing, "checked": {**existing.get("checked", {}), key: entry}}, target)


class CheckedCase(NamedTuple):
    """One ranking `persample check` measured for a model's structure: the machine, mode, batch size, methods
    fastest first, and the model's description.
    """

    machine: str
    mode: str
    batch_size: int
    ranking: list[str]
    description: str


def checked_cases(summary: dict, key: str, device: str) -> list[CheckedCase]:
    """The checked rankings of the model with this structure on machines of this device type."""
    entry = summary.get("checked", {}).get(key)
    if not entry:
        return []
    return [
        CheckedCase(run["machine"], run["mode"], int(batch), ranking, entry.get("description", ""))
        for run in entry.get("runs", {}).values() if run.get("device") == device
        for batch, ranking in run.get("batches", {}).items()
    ]
