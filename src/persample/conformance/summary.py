"""The terminal summary of a conformance run: counts per method, peer findings, stale entries."""
from __future__ import annotations

from collections import Counter, defaultdict

OUTCOMES = ("pass", "fail", "unsupported")


def summarize(records: list[dict], known_deviations: dict[str, str]) -> list[str]:
    """Lines: a pass/fail/unsupported table per method, then what the known-deviations file says."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        counts[record["method"]][record["outcome"]] += 1
    lines = ["", "conformance matrix (cells per outcome):", f"  {'method':18s} {'pass':>5s} {'fail':>5s} {'unsupported':>12s}"]
    for method, count in counts.items():
        lines.append(f"  {method:18s} {count['pass']:5d} {count['fail']:5d} {count['unsupported']:12d}")
    by_id = {r["id"]: r for r in records}
    findings = [r for r in records if r["outcome"] == "fail" and r["peer"] and r["id"] not in known_deviations]
    if findings:
        lines.append(f"peer deviations not yet in known_deviations.toml ({len(findings)}):")
        lines += [f"  {r['id']}: {r['reason']}" for r in findings]
    stale = [key for key in known_deviations if key in by_id and by_id[key]["outcome"] != "fail"]
    if stale:
        lines.append("known deviations that no longer fail (remove them): " + ", ".join(stale))
    unmatched = [key for key in known_deviations if key not in by_id]
    if unmatched and len(by_id) > 0:
        lines.append("known deviations matching no cell of this run: " + ", ".join(unmatched))
    return lines
