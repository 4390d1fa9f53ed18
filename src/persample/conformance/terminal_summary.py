"""The terminal summary of a conformance run: cells per outcome and per verdict, for each method."""
from __future__ import annotations

from collections import Counter, defaultdict

OUTCOMES = ("pass", "fail", "unsupported", "error", "reference")
VERDICTS = ("pass", "fail", "xfail", "skip")


def terminal_summary(records: list[dict]) -> list[str]:
    """Lines: per method, how many cells ended in each outcome, and what the gate made of them."""
    outcomes: dict[str, Counter] = defaultdict(Counter)
    verdicts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        outcomes[record["method"]][record["outcome"]] += 1
        verdicts[record["method"]][record.get("verdict") or "?"] += 1
    header = "".join(f"{o:>12s}" for o in OUTCOMES) + " |" + "".join(f"{v:>6s}" for v in VERDICTS)
    lines = ["", "conformance matrix (cells per outcome | per verdict of the gate; reference cells are not checks):",
             f"  {'method':18s}{header}"]
    for method in outcomes:
        row = "".join(f"{outcomes[method][o]:12d}" for o in OUTCOMES) + " |"
        row += "".join(f"{verdicts[method][v]:6d}" for v in VERDICTS)
        lines.append(f"  {method:18s}{row}")
    return lines
