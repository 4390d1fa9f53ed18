"""The report's part of `auto`'s data: the recommendations of the page, summarised in the schema of
`persample.recommendations` (per machine and case, the conformant methods fastest first, plus
each measured workload's signature)."""
from __future__ import annotations

from collections.abc import Iterable

from ..recommendations import RANKING_LENGTH, SCHEMA, empty, now, workload_signature
from .recommend import Recommendation


def summarize_recommendations(recommendations: Iterable[Recommendation], machines: dict[str, dict]) -> dict:
    """The summary of `recommendations`; `machines` maps a name to its device and GPU.

    `machines[name]["cases"][dtype][workload][size][batch size]` is the ranking: the first
    `RANKING_LENGTH` eligible methods, fastest first.
    """
    payload: dict = {**empty(), "schema": SCHEMA, "created": now()}
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


def machines_of(data) -> dict[str, dict]:
    """name -> {"device", "gpu"} for every machine in the benchmark rows or conformance files."""
    machines = {name: {"device": run.device, "gpu": run.machine.get("gpu")} for name, run in data.conformance.items()}
    for row in data.rows:
        machines.setdefault(row.machine, {"device": row.device or "cpu", "gpu": row.gpu or None})
    return machines
