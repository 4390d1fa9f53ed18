"""The conformance heat map: measured error / tolerance per method × workload, one panel per dtype.

Measured cells are coloured on a log scale (green below the tolerance, red above); unsupported
cells are grey, failures without a measurement (an exception) purple, and every failure is marked ✗.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .matrix import Matrix

LOW, HIGH = -6.0, 2.0  # log10(error / tolerance) colour range
MEASURED_SCALE = [[0.0, "#1a7837"], [0.72, "#d9f0a3"], [-LOW / (HIGH - LOW), "#fff7bc"], [0.78, "#fdae61"], [1.0, "#b2182b"]]
STATE_SCALE = [[0.0, "#cfcfcf"], [0.5, "#cfcfcf"], [0.5, "#6a3d9a"], [1.0, "#6a3d9a"]]
UNSUPPORTED, ERRORED = 0, 1


def _hover(text: str) -> str:
    return "<br>".join(html.escape(line[i:i + 100]) for line in text.split("\n") for i in range(0, max(len(line), 1), 100))


def _panel(matrix: Matrix) -> tuple[go.Heatmap, go.Heatmap, go.Scatter]:
    measured, state, hover, marks = [], [], [], {"x": [], "y": []}
    for method in matrix.methods:
        measured_row, state_row, hover_row = [], [], []
        for workload in matrix.workloads:
            cell = matrix.cell(method, workload)
            ratio = cell.ratio if cell else None
            measured_row.append(None if ratio is None else min(HIGH, max(LOW, math.log10(max(ratio, 1e-300)))))
            unmeasured = cell is not None and ratio is None
            state_row.append(
                (UNSUPPORTED if cell.outcome == "unsupported" else ERRORED) if unmeasured and cell.outcome != "pass" else None
            )
            hover_row.append(_hover(cell.details()) if cell else f"{method} · {workload}: no record")
            if cell is not None and cell.outcome == "fail":
                marks["x"].append(workload)
                marks["y"].append(method)
        measured.append(measured_row)
        state.append(state_row)
        hover.append(hover_row)
    common = {"x": matrix.workloads, "y": matrix.methods, "text": hover, "hoverongaps": False,
              "hovertemplate": "%{text}<extra></extra>", "xgap": 1, "ygap": 1}
    return (
        go.Heatmap(z=measured, coloraxis="coloraxis", name="error / tolerance", **common),
        go.Heatmap(z=state, coloraxis="coloraxis2", name="unsupported / error", **common),
        go.Scatter(x=marks["x"], y=marks["y"], mode="text", text=["✗"] * len(marks["x"]), hoverinfo="skip",
                   textfont={"color": "#000", "size": 14}, showlegend=False),
    )


def conformance_heatmap(matrices: list[Matrix]) -> go.Figure:
    """One machine's conformance results, a panel per dtype."""
    panels = max(1, len(matrices))
    heights = [max(1, len(m.methods)) for m in matrices] or [1]
    figure = make_subplots(
        rows=panels, cols=1, row_heights=heights, vertical_spacing=0.2 / panels, shared_xaxes=True,
    )
    for row, matrix in enumerate(matrices, start=1):
        for trace in _panel(matrix):
            figure.add_trace(trace, row=row, col=1)
        figure.update_yaxes(autorange="reversed", title_text=f"<b>{matrix.dtype}</b>", row=row, col=1)
    figure.update_xaxes(showticklabels=True, side="top", tickangle=-30, row=1, col=1)
    ticks = list(range(int(LOW), int(HIGH) + 1))
    figure.update_layout(
        coloraxis={"colorscale": MEASURED_SCALE, "cmin": LOW, "cmax": HIGH, "colorbar": {
            "title": {"text": "error / tolerance"}, "tickvals": ticks, "ticktext": [f"1e{t}" for t in ticks], "len": 0.6}},
        coloraxis2={"colorscale": STATE_SCALE, "cmin": UNSUPPORTED, "cmax": ERRORED, "showscale": False},
        height=sum(22 * h + 30 for h in heights) + 200, margin={"l": 150, "r": 20, "t": 100, "b": 100},
        template="plotly_white", hoverlabel={"align": "left"},
    )
    return figure
