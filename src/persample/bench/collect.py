"""`persample collect`: every machine's asv results and pytest-benchmark JSON as one tidy table,
`reports/results.csv`, one row per (machine, gpu, workload, size, batch, dtype, method, variant).

Of several observations of a row the latest run wins (asv over pytest-benchmark on a tie). The
baseline is not a row of its own: its time and memory fill `baseline_s` and
`baseline_memory_bytes` of every method of the same machine, workload, batch and dtype. The floor
is computed from the workload's model here and the machine's stored calibration.

The table merges, it never overwrites: every row of the existing table is kept unless this
collection has a row of the same key at least as recent. Only asv's results are committed (the
quick benchmark's JSON stays on the machine that ran it), so a row of another machine may exist
nowhere but in the committed table. Delete the table to rebuild it from the raw results alone.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from .asv_results import read_asv_results
from .calibration import Calibration, load_latest
from .floor import floor_for
from ..results_schema import COLUMNS, KEY_COLUMNS  # the table's one definition
from .observations import Observation
from .pytest_results import read_pytest_benchmark


def latest(observations: Iterable[Observation]) -> dict[tuple, Observation]:
    """The latest observation per `Observation.key` (machine, GPU, case); at equal dates asv's wins over pytest-
    benchmark's.
    """
    chosen: dict[tuple, Observation] = {}
    for observation in sorted(observations, key=lambda o: (o.date, o.source == "asv")):
        chosen[observation.key] = observation
    return chosen


def floor_columns(observation: Observation, calibration: Calibration | None) -> dict:
    """The roofline floors of the observation's case: floor_s (the warm floor) and fresh_floor_s (the
    fresh-output floor), in seconds (None without a calibration, or for the fresh one a calibration
    that predates the fresh-write rate), floor_bytes, floor_flops; {} for a workload this version no
    longer has.
    """
    try:
        floor = floor_for(observation.case)
    except ValueError:  # a workload this version of persample no longer has
        return {}
    throughput = calibration and calibration.throughput(observation.case.mode)
    seconds = calibration and floor.seconds(calibration.bandwidth, throughput)
    fresh = calibration and floor.fresh_seconds(calibration.bandwidth, calibration.fresh_write, throughput)
    return {"floor_s": seconds, "fresh_floor_s": fresh, "floor_bytes": floor.bytes, "floor_flops": floor.flops}


def row(observation: Observation, baseline: Observation | None, calibration: Calibration | None) -> dict:
    """One row of results.csv (the `COLUMNS`): the observation, its baseline's time (s) and peak memory
    (bytes), and the roofline floor.
    """
    machine, case = observation.machine, observation.case
    return {
        "machine": machine.name, "device": machine.device, "gpu": machine.gpu, "workload": case.workload,
        "size": case.size, "batch_size": case.batch_size, "dtype": case.mode, "method": case.method,
        "variant": case.variant, "status": observation.status, "reason": observation.reason,
        "median_s": observation.median_s, "spread_s": observation.spread_s,
        "peak_memory_bytes": observation.peak_memory_bytes,
        "baseline_s": baseline.median_s if baseline else None,
        "baseline_memory_bytes": baseline.peak_memory_bytes if baseline else None,
        **floor_columns(observation, calibration),
        "source": observation.source, "commit": observation.commit, "date": observation.date,
    }


def rows(observations: Iterable[Observation], calibrations: dict[str, Calibration]) -> list[dict]:
    """The results table: one row per latest observation of a method (baselines are columns of their methods'
    rows, not rows), sorted by key.
    """
    chosen = latest(observations)
    table = []
    for key in sorted(chosen, key=str):
        observation = chosen[key]
        if observation.case.is_baseline:
            continue
        baseline_case = observation.case.baseline()
        baseline = chosen.get((*key[:2], baseline_case.workload, baseline_case.size, baseline_case.batch_size,
                               baseline_case.mode, baseline_case.method, baseline_case.variant))
        table.append(row(observation, baseline, calibrations.get(observation.machine.name)))
    return table


def row_key(entry: dict) -> tuple[str, ...]:
    """The key of a table row, as text (so a row read back from the CSV has the same key)."""
    return tuple(str(entry[column]) for column in KEY_COLUMNS)


def read_table(path: Path) -> list[dict]:
    """The rows of an existing table as the CSV holds them (text, "" for none); [] without one."""
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="") as handle:
        return [entry for entry in csv.DictReader(handle) if all(column in entry for column in KEY_COLUMNS)]


def merge(kept: list[dict], fresh: list[dict]) -> list[dict]:
    """`fresh` rows over `kept` ones: per key the latest `date` wins, a fresh row on a tie."""
    merged = {row_key(entry): entry for entry in kept}
    for entry in fresh:
        key = row_key(entry)
        if key not in merged or str(entry.get("date") or "") >= str(merged[key].get("date") or ""):
            merged[key] = entry
    return [merged[key] for key in sorted(merged)]


def write_csv(table: list[dict], out: Path) -> None:
    """Write `table` to `out` with the `COLUMNS` header, None as empty cells (creating the directory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for entry in table:
            writer.writerow({k: "" if entry.get(k) is None else entry[k] for k in COLUMNS})


def collect(asv_results: Path, pytest_jsons: Iterable[Path], out: Path) -> list[dict]:
    """Read everything, merge it into the table at `out` (CSV) and write it; returns its rows (a row
    kept from the existing table holds the CSV's text)."""
    observations = read_asv_results(asv_results) if Path(asv_results).is_dir() else []
    calibrations = {}
    for path in pytest_jsons:
        found, stored = read_pytest_benchmark(path)
        observations += found
        if stored is not None:
            calibrations[stored.machine] = stored
    for name in {o.machine.name for o in observations}:
        calibrations[name] = load_latest(asv_results, name) or calibrations.get(name)
    table = merge(read_table(Path(out)), rows(observations, calibrations))
    write_csv(table, Path(out))
    return table
