"""Reading asv's results directory: per machine, per result file, each case's time and memory.

asv stores one value per parameter combination: a number, NaN (skipped, or not selected in that
run) or null (failed). It keeps no reasons, so a NaN becomes a "skipped" row only when the outcomes
log (`outcomes.jsonl`, written by the benchmark processes) says why; otherwise the case simply was
not run in that file.
"""
from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

from .grid import Case
from .observations import Machine, Observation, iso_from_millis
from .outcomes import FILENAME as OUTCOMES, outcome_key, read as read_outcomes

KINDS = {"time_step": "time", "track_peak_memory": "memory"}
NOT_ASV_RESULTS = {"machine.json", "benchmarks.json"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def read_machine(directory: Path) -> Machine:
    """The `Machine` (name, device type, GPU name) that asv's machine.json in `directory` describes."""
    info = json.loads((directory / "machine.json").read_text())
    return Machine(info["machine"], info.get("device") or "cpu", info.get("gpu") or "")


def values_by_case(result: dict) -> dict[str, dict[Case, dict]]:
    """kind -> case -> {"value", "q25", "q75", "started_at"} from one asv result file."""
    columns, found = result["result_columns"], {kind: {} for kind in KINDS.values()}
    for name, row in result["results"].items():
        kind = KINDS.get(name.rsplit(".", 1)[-1])
        if kind is None:
            continue
        entry = dict(zip(columns, row))
        combos = list(itertools.product(*[[ast.literal_eval(p) for p in axis] for axis in entry["params"]]))
        values = entry["result"] or [None] * len(combos)
        q25, q75 = entry.get("stats_q_25") or [None] * len(combos), entry.get("stats_q_75") or [None] * len(combos)
        for index, combo in enumerate(combos):
            found[kind][Case.from_params(*combo)] = {
                "value": values[index], "q25": q25[index], "q75": q75[index], "started_at": entry.get("started_at"),
            }
    return found


def observe(machine: Machine, case: Case, commit: str, values: dict, outcomes: dict) -> Observation | None:
    """The case's row from one result file, or None when that file did not run it."""
    time, memory = values["time"].get(case, {}), values["memory"].get(case, {})
    recorded = {kind: outcomes.get(outcome_key(commit, case, kind)) for kind in KINDS.values()}
    t, m = time.get("value", math.nan), memory.get("value", math.nan)
    started = time.get("started_at") or memory.get("started_at") or 0
    fields = {"machine": machine, "case": case, "source": "asv", "commit": commit, "date": iso_from_millis(started)}
    peak = int(m) if _finite(m) else None
    memory_failure = (recorded["memory"] or {}).get("reason") or "the memory benchmark failed"
    if _finite(t) or (peak is not None and not recorded["time"]):
        spread = time["q75"] - time["q25"] if _finite(time.get("q25")) and _finite(time.get("q75")) else None
        reason = f"peak memory not measured: {memory_failure}" if m is None else ""
        return Observation(**fields, status="ok", reason=reason, median_s=t if _finite(t) else None,
                           spread_s=spread, peak_memory_bytes=peak)
    if t is None:
        reason = (recorded["time"] or {}).get("reason") or "the time benchmark failed (rerun with --show-stderr)"
        return Observation(**fields, status="failed", reason=reason, peak_memory_bytes=peak)
    outcome = recorded["time"] or recorded["memory"]
    if outcome is None:
        return None
    return Observation(**fields, status=outcome["status"], reason=outcome["reason"])


def read_asv_results(results_dir: Path) -> list[Observation]:
    """Every machine's observations, in the order the result files ran."""
    observations = []
    for directory in sorted(p for p in Path(results_dir).iterdir() if (p / "machine.json").is_file()):
        machine, outcomes = read_machine(directory), read_outcomes(directory / OUTCOMES)
        for path in sorted(directory.glob("*.json")):
            if path.name in NOT_ASV_RESULTS:
                continue
            result = json.loads(path.read_text())
            values = values_by_case(result)
            for case in sorted(set(values["time"]) | set(values["memory"])):
                observation = observe(machine, case, result["commit_hash"], values, outcomes)
                if observation is not None:
                    observations.append(observation)
    return observations
