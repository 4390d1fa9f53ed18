"""The HTML page of a check, in the report's style and offline: the ranked table per dtype, the
reasons, and time and peak memory against batch size (log-log, one line per correct method, the
ordinary backward as the baseline)."""
from __future__ import annotations

import json
from pathlib import Path

from .judge import CORRECT
from .report import CheckReport

TEMPLATE = Path(__file__).with_name("templates") / "check.html"
MEBIBYTE = 2**20


def figure(report: CheckReport, dtype: str, metric: str) -> dict:
    """A plotly figure (as a dict) of `metric` ("time" or "memory") against batch size."""
    from ..methods.registry import registered
    from ..report.styles import BASELINE, method_styles

    pick = (lambda m: m.median_s) if metric == "time" else (lambda m: None if m.peak_bytes is None else m.peak_bytes / MEBIBYTE)
    results = [r for r in report.ranked(dtype) if r.status == CORRECT and any(pick(m) for m in r.measurements)]
    known = [n for n, m in registered().items() if not m.capabilities.chooser]
    styles = method_styles([*known, *(r.method for r in report.results if r.method not in known)])  # the report's styles
    data = []
    for result in results:
        points = [m for m in result.measurements if pick(m)]
        style = styles[result.method]
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": result.method,
            "x": [m.batch_size for m in points], "y": [pick(m) for m in points],
            "line": {"color": style.color, "dash": "solid"}, "marker": {"symbol": style.marker, "size": 8},
            "error_y": {"type": "data", "symmetric": False, "array": [m.q3_s - m.median_s for m in points],
                        "arrayminus": [m.median_s - m.q1_s for m in points], "thickness": 1}
            if metric == "time" else None,
        })
    baseline = [m for m in report.baseline.get(dtype, []) if pick(m)]
    if baseline:
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{BASELINE.name} (baseline)",
                     "x": [m.batch_size for m in baseline], "y": [pick(m) for m in baseline],
                     "line": {"color": BASELINE.color, "dash": BASELINE.dash, "width": 1.5},
                     "marker": {"symbol": BASELINE.marker, "color": BASELINE.color, "size": 11}})
    title = "time per step (s)" if metric == "time" else "peak memory (MiB)"
    layout = {
        "xaxis": {"type": "log", "title": {"text": "batch size"}, "tickvals": report.batch_sizes},
        "yaxis": {"type": "log", "title": {"text": title}},
        "height": 380, "margin": {"l": 70, "r": 20, "t": 30, "b": 50}, "template": "plotly_white",
        "legend": {"orientation": "v", "x": 1.02, "xanchor": "left"},
    }
    return {"data": [{k: v for k, v in trace.items() if v is not None} for trace in data], "layout": layout}


def write_page(report: CheckReport, out: Path) -> Path:
    """Write `out` (and the report's `assets/` beside it); returns `out`."""
    import jinja2

    from ..report.build import write_assets
    from ..report.format import FILTERS

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_assets(out.parent / "assets")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    figures = {f"{metric}-{dtype}": json.dumps(figure(report, dtype, metric)).replace("</", "<\\/")
               for dtype in report.dtypes for metric in ("time", "memory")}
    page = environment.get_template(TEMPLATE.name).render(report=report, figures=figures, CORRECT=CORRECT)
    out.write_text(page, encoding="utf-8")
    return out
