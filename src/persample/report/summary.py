"""The compact summary `method="auto"` reads: per machine and case, the conformant methods
fastest first, plus each measured workload's signature.

Where it comes from: the reports directory `$PERSAMPLE_RESULTS` names (else `./reports/`) when it
holds a `results.csv`, otherwise `recommendations.json` shipped in this package.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .recommend import Recommendation
from .signature import workload_signature

SCHEMA = "persample.recommendations/1"
RANKING_LENGTH = 5
PACKAGED = Path(__file__).with_name("recommendations.json")
ENV_VAR = "PERSAMPLE_RESULTS"
FLAT_LIST = re.compile(r"\[\n\s*([^\[\]{}]*?)\n\s*\]")  # a list of scalars, to be written on one line


class Case(NamedTuple):
    workload: str
    size: str
    batch_size: int
    ranking: list[str]


def summarize(recommendations: Iterable[Recommendation], machines: dict[str, dict]) -> dict:
    """The summary of `recommendations`; `machines` maps a name to its device and GPU.

    `machines[name]["cases"][dtype][workload][size][batch size]` is the ranking: the first
    `RANKING_LENGTH` eligible methods, fastest first.
    """
    payload: dict = {"schema": SCHEMA, "created": _now(), "machines": {}, "workloads": {}}
    for recommendation in recommendations:
        ranking = recommendation.ranking()[:RANKING_LENGTH]
        if not ranking:
            continue
        key = recommendation.key
        info = machines.get(key.machine, {})
        machine = payload["machines"].setdefault(
            key.machine, {"device": info.get("device", "cpu"), "gpu": info.get("gpu") or None, "cases": {}}
        )
        sizes = machine["cases"].setdefault(key.dtype, {}).setdefault(key.workload, {})
        sizes.setdefault(key.size, {})[str(key.batch_size)] = ranking
        signature = workload_signature(key.workload, key.size)
        if signature is not None:
            payload["workloads"].setdefault(key.workload, {})[key.size] = signature.to_json()
    return payload


def cases(machine: dict, dtype: str) -> list[Case]:
    """The machine's measured cases in `dtype`, flattened."""
    return [
        Case(workload, size, int(batch), ranking)
        for workload, sizes in machine.get("cases", {}).get(dtype, {}).items()
        for size, batches in sizes.items()
        for batch, ranking in batches.items()
    ]


def merge(existing: dict, new: dict) -> dict:
    """`new`'s machines replace the same machines in `existing`; the others are kept."""
    if existing.get("schema") != SCHEMA:
        return new
    merged = {"schema": SCHEMA, "created": new["created"], "machines": dict(existing.get("machines", {})), "workloads": {}}
    merged["machines"].update(new["machines"])
    for source in (existing, new):
        for workload, sizes in source.get("workloads", {}).items():
            merged["workloads"].setdefault(workload, {}).update(sizes)
    return merged


def write(summary: dict, path: Path, *, merge_existing: bool = False) -> Path:
    """Write `summary` to `path` (merged into what is there if asked)."""
    if merge_existing and path.is_file():
        summary = merge(json.loads(path.read_text()), summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1, sort_keys=True)
    path.write_text(FLAT_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n")
    return path


def from_reports(reports_dir: Path) -> dict:
    """The summary computed from a reports directory's results (cached while its files are unchanged)."""
    files = [reports_dir / "results.csv", *sorted((reports_dir / "conformance").glob("*.json"))]
    stamps = tuple((str(f), f.stat().st_mtime_ns) for f in files if f.is_file())
    return _from_reports(reports_dir, stamps)


@lru_cache(maxsize=4)
def _from_reports(reports_dir: Path, stamps: tuple) -> dict:
    from .data import load
    from .recommend import peer_test, recommend
    from .verdicts import ConformanceIndex

    data = load(reports_dir)
    index = ConformanceIndex(data.conformance)
    machines = machines_of(data)
    return summarize(recommend(data.rows, index, peer_test(index)), machines)


def machines_of(data) -> dict[str, dict]:
    """name -> {"device", "gpu"} for every machine in the benchmark rows or conformance files."""
    machines = {name: {"device": run.device, "gpu": run.machine.get("gpu")} for name, run in data.conformance.items()}
    for row in data.rows:
        machines.setdefault(row.machine, {"device": row.device or "cpu", "gpu": row.gpu or None})
    return machines


def current() -> tuple[dict, str]:
    """The summary `auto` uses and where it came from."""
    configured = os.environ.get(ENV_VAR)
    directory = Path(configured) if configured else Path.cwd() / "reports"
    if (directory / "results.csv").is_file():
        return from_reports(directory.resolve()), str(directory)
    return packaged(), str(PACKAGED)


def packaged() -> dict:
    """The summary shipped with the package (empty if absent or unreadable)."""
    try:
        payload = json.loads(PACKAGED.read_text())
    except (OSError, ValueError):
        return {"schema": SCHEMA, "machines": {}, "workloads": {}}
    return payload if payload.get("schema") == SCHEMA else {"schema": SCHEMA, "machines": {}, "workloads": {}}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
