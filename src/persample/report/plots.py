"""Plotly figures of the benchmarks: time and peak memory against batch size, one panel per
workload, one line per method (log axes; hover gives the exact numbers and the conformance verdict),
the non-private backward and the floors (warm and fresh-output) beside them. Each method keeps its colour and
marker (`styles`) in every figure; the legend is given the height it needs, so it never scrolls.
"""
from __future__ import annotations

import copy
import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from plotly.subplots import make_subplots

from .data import BenchRow
from .format import bytes_text, seconds_text
from .styles import BASELINE, FAILED_COLOR, FLOOR, FRESH_FLOOR, Reference, Style, line_dash, marker_symbol
from .verdicts import Verdict

COLUMNS = 3
PANEL_HEIGHT = 300
LEGEND_ENTRY_HEIGHT = 24  # pixels per legend line, with the small gap between groups set below
LEGEND_GROUP_GAP = 3


@dataclass(frozen=True)
class Metric:
    """What a batch figure plots: the method's value, the non-private baseline and the floor (for
    time, the warm floor; `fresh_floor`, the fresh-output floor, where it applies)."""

    title: str
    value: Callable[[BenchRow], float | None]
    baseline: Callable[[BenchRow], float | None]
    floor: Callable[[BenchRow], float | None]
    text: Callable[[float], str]
    fresh_floor: Callable[[BenchRow], float | None] = lambda r: None


TIME = Metric("time per step (s)", lambda r: r.median_s, lambda r: r.baseline_s, lambda r: r.floor_s, seconds_text,
              lambda r: r.fresh_floor_s)
MEBIBYTE = 2**20


def _mebibytes(size: int | None) -> float | None:
    return None if size is None else size / MEBIBYTE


MEMORY = Metric(
    "peak memory (MiB)", lambda r: _mebibytes(r.peak_memory_bytes), lambda r: _mebibytes(r.baseline_memory_bytes),
    lambda r: _mebibytes(r.floor_bytes), lambda mib: f"{bytes_text(mib * MEBIBYTE)} ({round(mib * MEBIBYTE):,} bytes)",
)


def facet_label(row: BenchRow) -> str:
    """A plot facet's title: '<workload> · <size>', or the workload alone without a size."""
    return f"{row.workload} · {row.size}" if row.size else row.workload


def batch_figure(
    rows: list[BenchRow], metric: Metric, verdict: Callable[[BenchRow], Verdict], styles: dict[str, Style]
) -> dict:
    """One panel per workload of `rows` (one machine, one dtype): `metric` against batch size.

    Returns a plotly figure as a dict (thousands of traces make graph objects, validated one by one,
    slow), as tall as its legend needs.
    """
    facets: dict[str, list[BenchRow]] = defaultdict(list)
    for row in rows:
        facets[facet_label(row)].append(row)
    names = list(facets)
    layout = copy.deepcopy(_grid(len(names), metric.title))
    for annotation, name in zip(layout["annotations"], names):
        annotation["text"] = html.escape(name)
    data, shown = [], set()
    for i, name in enumerate(names):
        suffix = i + 1 if i else ""
        axes = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}
        batches = sorted({row.batch_size for row in facets[name]})  # ticks at the measured batch sizes
        layout[f"xaxis{suffix}"].update(tickvals=batches, ticktext=[str(b) for b in batches])
        for trace in _facet_traces(facets[name], metric, verdict, styles):
            trace.update(axes, showlegend=trace["legendgroup"] not in shown)
            shown.add(trace["legendgroup"])
            data.append(trace)
    layout["height"] = max(layout["height"], legend_height(len(shown)))
    return {"data": data, "layout": layout}


def legend_height(entries: int) -> int:
    """The figure height (pixels) at which a legend of `entries` lines fits without scrolling."""
    return LEGEND_ENTRY_HEIGHT * entries + 100


@lru_cache(maxsize=None)
def _grid(panels: int, title: str) -> dict:
    """The layout of a grid of log-log panels (from `make_subplots`), cached per panel count."""
    grid_rows, columns = max(1, math.ceil(panels / COLUMNS)), min(COLUMNS, max(1, panels))
    figure = make_subplots(
        rows=grid_rows, cols=columns, subplot_titles=[" "] * panels,
        horizontal_spacing=0.07, vertical_spacing=0.5 / grid_rows,
    )
    figure.update_xaxes(type="log", title_text="batch size", title_standoff=2)
    figure.update_yaxes(type="log", title_text=title, title_standoff=2)
    figure.update_layout(
        height=PANEL_HEIGHT * grid_rows + 60, margin={"l": 60, "r": 20, "t": 40, "b": 40},
        hoverlabel={"align": "left"}, legend={"groupclick": "togglegroup", "tracegroupgap": LEGEND_GROUP_GAP},
        template="plotly_white",
    )
    layout = figure.layout.to_plotly_json()
    for empty in range(panels + 1, grid_rows * columns + 1):
        for axis in ("xaxis", "yaxis"):
            layout[f"{axis}{empty}"]["visible"] = False
    return layout


def _facet_traces(rows, metric: Metric, verdict, styles: dict[str, Style]) -> list[dict]:
    by_label: dict[str, list[BenchRow]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.batch_size):
        by_label[row.label].append(row)
    traces = []
    for label, series in by_label.items():
        points = [r for r in series if r.timed and metric.value(r)]
        if points:
            traces.append(_method_trace(label, points, metric, verdict, styles.get(series[0].method, UNKNOWN)))
    traces += _reference_traces(rows, metric)
    failures = _failure_trace(rows, traces)
    return traces + ([failures] if failures else [])


UNKNOWN = Style("#444444", "circle")


def _method_trace(label: str, points: list[BenchRow], metric: Metric, verdict, style: Style) -> dict:
    verdicts = [verdict(r) for r in points]
    conformant = all(v.passed for v in verdicts)
    details = [
        f"{metric.text(metric.value(r))}" + (f" ± {seconds_text(r.spread_s)}" if metric is TIME and r.spread_s else "")
        + f"<br>{_wrap(v.describe())}" for r, v in zip(points, verdicts)
    ]
    return {
        "type": "scatter", "x": [r.batch_size for r in points], "y": [metric.value(r) for r in points],
        "name": label, "legendgroup": label, "mode": "lines+markers", "text": details,
        "line": {"color": style.color, "dash": line_dash(conformant, points[0].captured), "width": 1.5},
        "marker": {"symbol": marker_symbol(style, conformant), "color": style.color, "size": 8,
                   "line": {"width": 1.5, "color": style.color}},
        "hovertemplate": f"<b>{html.escape(label)}</b><br>batch %{{x}}: %{{text}}<extra></extra>",
    }


def _reference_traces(rows: list[BenchRow], metric: Metric) -> list[dict]:
    """The non-private backward and the floor, one point per batch size: lines with markers, so a
    workload measured at one batch size still shows them."""
    traces = []
    for reference, pick in ((BASELINE, metric.baseline), (FLOOR, metric.floor), (FRESH_FLOOR, metric.fresh_floor)):
        by_batch = {r.batch_size: pick(r) for r in rows if pick(r)}
        if by_batch:
            batches = sorted(by_batch)
            traces.append(_reference_trace(reference, batches, [by_batch[b] for b in batches], metric))
    return traces


def _reference_trace(reference: Reference, batches: list[int], values: list[float], metric: Metric) -> dict:
    return {
        "type": "scatter", "x": batches, "y": values, "name": reference.name, "legendgroup": reference.name,
        "mode": "lines+markers", "text": [metric.text(value) for value in values],
        "line": {"color": reference.color, "dash": reference.dash, "width": 1.5},
        "marker": {"symbol": reference.marker, "color": reference.color, "size": 11,
                   "line": {"width": 2, "color": reference.color}},
        "hovertemplate": f"{reference.name}<br>batch %{{x}}: %{{text}}<extra></extra>",
    }


def _failure_trace(rows: list[BenchRow], traces: list[dict]) -> dict | None:
    """Red crosses at the top of the panel where a method failed or ran out of memory."""
    failed: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row.status == "failed":
            why = "out of memory" if row.out_of_memory else _wrap(row.reason or "failed")
            failed[row.batch_size].append(f"{html.escape(row.label)}: {why}")
    values = [y for trace in traces for y in trace["y"] if y]
    if not failed or not values:
        return None
    batches = sorted(failed)
    return {
        "type": "scatter", "x": batches, "y": [max(values)] * len(batches), "name": "failed / out of memory",
        "legendgroup": "failed", "mode": "markers", "text": ["<br>".join(failed[b]) for b in batches],
        "marker": {"symbol": "x-thin-open", "size": 12, "color": FAILED_COLOR, "line": {"width": 2, "color": FAILED_COLOR}},
        "hovertemplate": "batch %{x}<br>%{text}<extra></extra>",
    }


def _wrap(text: str, width: int = 90) -> str:
    """HTML-escaped text broken into lines for a hover label."""
    text = html.escape(text)
    return "<br>".join(text[i:i + width] for i in range(0, len(text), width))
