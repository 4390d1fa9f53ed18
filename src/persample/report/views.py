"""What the page shows per machine and dtype, assembled from the data and the selection rule."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import plotly.io

from ..methods.registry import registered
from ..workloads import all_workloads
from .data import BenchRow, ReportData
from .heatmap import conformance_heatmap
from .matrix import Matrix, dtype_key, findings, matrices
from .plots import MEMORY, TIME, batch_figure
from .recommend import Recommendation, by_machine_and_dtype
from .styles import method_styles
from .verdicts import ConformanceIndex


@dataclass
class DtypeView:
    """One machine's results in one mode: the recommendation per case and the time and memory figures' ids."""

    dtype: str
    recommendations: list[Recommendation]
    time_figure: str
    memory_figure: str

    def winners(self) -> list[tuple[str, int]]:
        """(method label, cases won), most wins first."""
        won = Counter(r.best.row.label for r in self.recommendations if r.best)
        return won.most_common()

    @property
    def unrecommended(self) -> int:
        """How many cases have no conformant method with a time."""
        return sum(1 for r in self.recommendations if r.best is None)


@dataclass
class MachineView:
    """What the page shows of one machine: facts, its conformance runs and matrices, a view per mode, the
    heatmap, findings, and whether it is the reader's own.
    """

    name: str
    anchor: str
    device: str
    facts: dict[str, str]
    conformance_from: list[str]
    dtypes: list[DtypeView] = field(default_factory=list)
    matrices: list[Matrix] = field(default_factory=list)
    heatmap: str | None = None
    findings: list = field(default_factory=list)
    own: bool = False  # the machine that built the page: the reader's own, shown first


class Figures:
    """Figures by id, serialised for `<script type="application/json">` blocks."""

    def __init__(self) -> None:
        self.specs: dict[str, str] = {}

    def add(self, figure_id: str, figure) -> str:
        """Keep `figure`'s plotly JSON (safe inside a script element) under `figure_id`; returns the id."""
        self.specs[figure_id] = plotly.io.to_json(figure, validate=False).replace("</", "<\\/")
        return figure_id


def anchor(*parts: str) -> str:
    """An HTML id from `parts`: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def method_order(data: ReportData) -> list[str]:
    """Registered methods in registry order, then any other method the data names."""
    names = list(registered())
    seen = {r.method for r in data.rows} | {rec["method"] for run in data.conformance.values() for rec in run.records}
    return names + sorted(seen - set(names))


def _facts(name: str, data: ReportData, rows: list[BenchRow]) -> dict[str, str]:
    run = data.conformance.get(name)
    machine = run.machine if run else {}
    facts = {
        "device": machine.get("device") or (rows[0].device if rows else ""),
        "GPU": machine.get("gpu") or (rows[0].gpu if rows else ""),
        "CPU": f"{machine.get('cpu', '')} ({machine.get('cores')} cores)" if machine.get("cpu") else "",
        "CUDA / driver": " / ".join(str(machine[k]) for k in ("cuda", "driver") if machine.get(k)),
        "versions": ", ".join(f"{lib} {v}" for lib, v in (machine.get("versions") or {}).items() if v),
        "benchmark commits": ", ".join(sorted({r.commit[:10] for r in rows if r.commit})),
    }
    return {key: value for key, value in facts.items() if value}


def _zoo_position(workloads: list[str], workload: str) -> tuple[int, str]:
    return (workloads.index(workload) if workload in workloads else len(workloads), workload)


def machine_order(devices: dict[str, str], this_machine: str | None) -> list[str]:
    """Machine names as the page shows them: this machine first, then GPUs, then CPUs, by name."""
    return sorted(devices, key=lambda n: (n != this_machine, devices[n] != "cuda", n))


def machine_views(data: ReportData, index: ConformanceIndex, recommendations: list[Recommendation], figures: Figures,
                  this_machine: str | None = None) -> list[MachineView]:
    """One view per machine present in the benchmarks or the conformance results, in
    `machine_order`; the one named `this_machine` (the page's builder) is marked `own`."""
    methods = method_order(data)
    styles = method_styles(methods)
    workloads = [w.name for w in all_workloads()]
    grouped = by_machine_and_dtype(recommendations)
    rows_of: dict[str, list[BenchRow]] = {}
    for row in data.rows:
        rows_of.setdefault(row.machine, []).append(row)
    devices = {name: run.device for name, run in data.conformance.items()}
    devices.update({row.machine: row.device or "cpu" for row in data.rows})
    views = []
    for name in machine_order(devices, this_machine):
        rows = rows_of.get(name, [])
        view = MachineView(name, anchor("machine", name), devices[name], _facts(name, data, rows),
                           index.source_for(name, devices[name]), own=name == this_machine)
        for dtype in sorted(grouped.get(name, {}), key=dtype_key):
            case_rows = [r for r in rows if r.dtype == dtype]
            ordered = sorted(case_rows, key=lambda r: _zoo_position(workloads, r.workload))
            cases = sorted(grouped[name][dtype], key=lambda c: (_zoo_position(workloads, c.key.workload), c.key.size, c.key.batch_size))
            view.dtypes.append(DtypeView(
                dtype, cases,
                figures.add(anchor("time", name, dtype), batch_figure(ordered, TIME, index.verdict_for, styles)),
                figures.add(anchor("memory", name, dtype), batch_figure(ordered, MEMORY, index.verdict_for, styles)),
            ))
        run = data.conformance.get(name)
        if run is not None:
            view.matrices = matrices(run, methods, workloads)
            view.heatmap = figures.add(anchor("conformance", name), conformance_heatmap(view.matrices))
            view.findings = findings(run)
        views.append(view)
    return views
