"""Why a benchmark case was skipped or failed, written next to the results (asv keeps no reasons).

`persample bench` points `$PERSAMPLE_BENCH_OUTCOMES` at `<results>/<machine>/outcomes.jsonl`; the
benchmark processes append one JSON object per skipped or failed case (the file is `.jsonl` so that
asv does not take it for a result file), and `persample collect` joins them to asv's values.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

from .grid import Case

OUTCOMES_ENV = "PERSAMPLE_BENCH_OUTCOMES"
COMMIT_ENV = "PERSAMPLE_BENCH_COMMIT"
FILENAME = "outcomes.jsonl"
CASE_FIELDS = tuple(f.name for f in fields(Case))


def current_commit() -> str:
    """The commit being benchmarked: ours when `persample bench` runs, else asv's."""
    return os.environ.get(COMMIT_ENV) or os.environ.get("ASV_COMMIT", "")


def entry(case: Case, kind: str, status: str, reason: str, commit: str) -> dict:
    """One line of the outcomes log: the case's fields, `kind` (what was measured), `status`, `reason`,
    `commit` and the current UTC time.
    """
    return {**asdict(case), "kind": kind, "status": status, "reason": reason, "commit": commit,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def append(path: Path, entries: list[dict]) -> None:
    """Append `entries` to the JSON-lines log `path` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write("".join(json.dumps(e) + "\n" for e in entries))


def record(case: Case, kind: str, status: str, reason: str) -> None:
    """Append one outcome to the log named by $PERSAMPLE_BENCH_OUTCOMES (no-op when unset)."""
    path = os.environ.get(OUTCOMES_ENV)
    if path:
        append(Path(path), [entry(case, kind, status, reason, current_commit())])


def describe(error: BaseException) -> str:
    """A one-line reason for an exception ("OutOfMemoryError: CUDA out of memory. ...")."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def outcome_key(commit: str, case: Case, kind: str) -> tuple:
    """(commit, the case's fields, kind): one outcome per key, the latest line winning."""
    return (commit, *(getattr(case, f) for f in CASE_FIELDS), kind)


def read(path: Path) -> dict[tuple, dict]:
    """(commit, *case fields, kind) -> the latest outcome recorded for it."""
    latest: dict[tuple, dict] = {}
    if not Path(path).is_file():
        return latest
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            case = Case(**{f: item[f] for f in CASE_FIELDS})
            latest[outcome_key(item["commit"], case, item["kind"])] = item
    return latest
