"""Known deviations of peers: one TOML file keyed by cell id, each entry with its reason."""
from __future__ import annotations

import tomllib
from pathlib import Path


def load_known_deviations(path: Path) -> dict[str, str]:
    """`{cell id: reason}` from a file of `["cell-id"]` tables with a `reason` key."""
    if not path.exists():
        return {}
    table = tomllib.loads(path.read_text())
    missing = [key for key, entry in table.items() if not isinstance(entry, dict) or "reason" not in entry]
    if missing:
        raise ValueError(f"{path}: entries without a reason: {missing}")
    return {key: entry["reason"] for key, entry in table.items()}
