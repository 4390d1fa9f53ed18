"""The selection rule shared by the report and `method="auto"`.

For each case (machine, dtype, workload, size, batch size) the recommended method is the fastest
benchmarked one (by median time; a CUDA-graph-captured variant counts as its method) whose run
succeeded and whose conformance verdict for that method, workload and dtype is "pass". A method
that failed conformance, was unsupported, has no conformance record, ran out of memory, failed or
was skipped is listed with its reason and never recommended.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from .data import BenchRow
from .verdicts import ConformanceIndex, Verdict


@dataclass(frozen=True, order=True)
class CaseKey:
    """What one recommendation is for: machine, dtype (mode), workload, size and batch size; ordered for
    display.
    """

    machine: str
    dtype: str
    workload: str
    size: str
    batch_size: int


@dataclass(frozen=True)
class Entry:
    """One benchmarked method (and variant) in one case, with its conformance verdict."""

    row: BenchRow
    verdict: Verdict
    peer: bool

    @cached_property
    def _excluded(self) -> tuple[str, str] | None:
        """(kind in a few words, full reason) when this entry can never be recommended."""
        row = self.row
        if row.out_of_memory:
            return "out of memory", f"out of memory: {row.reason}"
        if row.status != "ok":
            return row.status, f"{row.status}: {row.reason or 'no reason given'}"
        if not row.timed:
            return "no time recorded", "no time recorded"
        if not self.verdict.passed:
            kinds = {"fail": "fails conformance", "unsupported": "unsupported in conformance"}
            return kinds.get(self.verdict.outcome, "no conformance record"), self.verdict.describe()
        return None

    @property
    def exclusion(self) -> str | None:
        """Why this entry can never be recommended, or None if it is eligible."""
        return self._excluded[1] if self._excluded else None

    @property
    def exclusion_kind(self) -> str | None:
        """The exclusion in a few words ("out of memory", "fails conformance"...)."""
        return self._excluded[0] if self._excluded else None

    @property
    def eligible(self) -> bool:
        """Whether the method may be recommended for the case (nothing excluded it)."""
        return self._excluded is None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class Recommendation:
    """The outcome of the rule for one case, and the figures the report shows next to it."""

    key: CaseKey
    entries: list[Entry] = field(default_factory=list)

    @cached_property
    def eligible(self) -> list[Entry]:
        """Eligible entries, fastest first (computed once: entries are complete by then)."""
        return sorted((e for e in self.entries if e.eligible), key=lambda e: e.row.median_s)

    @property
    def best(self) -> Entry | None:
        """The fastest eligible entry, or None."""
        eligible = self.eligible
        return eligible[0] if eligible else None

    @property
    def excluded(self) -> list[Entry]:
        """The entries excluded from the recommendation, each with its reason."""
        return [e for e in self.entries if not e.eligible]

    @property
    def loop(self) -> Entry | None:
        """The eager `loop` run, the reference the speedup is measured against (if it ran)."""
        return next((e for e in self.entries if e.row.method == "loop" and not e.row.captured and e.row.timed), None)

    @property
    def best_peer(self) -> Entry | None:
        """The fastest eligible (timed and conformant) peer."""
        return next((e for e in self.eligible if e.peer), None)

    @property
    def speedup_vs_loop(self) -> float | None:
        """loop's median time over the best method's (a ratio), or None without both."""
        best, loop = self.best, self.loop
        return _ratio(loop.row.median_s, best.row.median_s) if best and loop else None

    @property
    def speedup_vs_peer(self) -> float | None:
        """The fastest eligible peer's median time over the best method's (a ratio), or None without both."""
        best, peer = self.best, self.best_peer
        return _ratio(peer.row.median_s, best.row.median_s) if best and peer else None

    @property
    def overhead(self) -> float | None:
        """Time over the non-private batch forward+backward (`median_s / baseline_s`)."""
        return _ratio(self.best.row.median_s, self.best.row.baseline_s) if self.best else None

    @property
    def overhead_spread(self) -> float | None:
        """The overhead's spread: the recommended run's interquartile range ÷ the baseline time."""
        return _ratio(self.best.row.spread_s, self.best.row.baseline_s) if self.best else None

    @property
    def overhead_below_one(self) -> str | None:
        """How to read an overhead below 1×: "noise" when 1× lies within the overhead's spread,
        "beyond spread" otherwise; None at 1× or above. Per-sample gradients do the plain
        backward's work and more, but the baseline is one eager PyTorch step: a method compiled by
        another framework (jax) can beat it at a small batch, or one of the two times, taken apart,
        is off."""
        overhead = self.overhead
        if overhead is None or overhead >= 1:
            return None
        return "noise" if overhead + (self.overhead_spread or 0.0) >= 1 else "beyond spread"

    @property
    def roofline_fraction(self) -> float | None:
        """Fraction of the warm floor reached (`floor_s / median_s`): every byte at the bandwidth into
        memory already touched."""
        return _ratio(self.best.row.floor_s, self.best.row.median_s) if self.best else None

    @property
    def fresh_floor_fraction(self) -> float | None:
        """Fraction of the fresh-output floor reached (`fresh_floor_s / median_s`): the per-sample
        gradients allocated and written as new memory, as a step returning new tensors must."""
        return _ratio(self.best.row.fresh_floor_s, self.best.row.median_s) if self.best else None

    def ranking(self) -> list[str]:
        """Eligible method names, fastest first, each once (its best variant)."""
        names: list[str] = []
        for entry in self.eligible:
            if entry.row.method not in names:
                names.append(entry.row.method)
        return names


def recommend(
    rows: Iterable[BenchRow], index: ConformanceIndex, is_peer: Callable[[str], bool]
) -> list[Recommendation]:
    """One recommendation per case present in `rows`, sorted by case."""
    cases: dict[CaseKey, Recommendation] = {}
    for row in rows:
        key = CaseKey(row.machine, row.dtype, row.workload, row.size, row.batch_size)
        cases.setdefault(key, Recommendation(key)).entries.append(Entry(row, index.verdict_for(row), is_peer(row.method)))
    for recommendation in cases.values():
        recommendation.entries.sort(key=lambda e: (e.row.median_s is None, e.row.median_s or 0.0, e.row.label))
    return [cases[key] for key in sorted(cases)]


def by_machine_and_dtype(recommendations: Iterable[Recommendation]) -> dict[str, dict[str, list[Recommendation]]]:
    """machine -> dtype -> recommendations (in case order)."""
    grouped: dict[str, dict[str, list[Recommendation]]] = defaultdict(lambda: defaultdict(list))
    for recommendation in recommendations:
        grouped[recommendation.key.machine][recommendation.key.dtype].append(recommendation)
    return {machine: dict(dtypes) for machine, dtypes in grouped.items()}


def peer_test(index: ConformanceIndex) -> Callable[[str], bool]:
    """`is_peer(method)`: the registry's `Capabilities.peer`, else the conformance records' flag."""
    from ..methods.registry import registered

    methods = registered()

    def is_peer(name: str) -> bool:
        if name in methods:
            return methods[name].capabilities.peer
        return name in index.peers

    return is_peer
