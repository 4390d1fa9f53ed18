"""`build_report`: the offline method-selection page from the conformance results and the
benchmark table, with plotly.js and the stylesheet written as local assets next to it."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import jinja2
import plotly.offline

from . import summary
from .capabilities import capability_rows
from .data import ReportData, load
from .format import FILTERS
from .recommend import peer_test, recommend
from .verdicts import ConformanceIndex
from .views import Figures, machine_views

TEMPLATES = Path(__file__).with_name("templates")
STATIC_ASSETS = ("report.css", "report.js")
PLOTLY_ASSET = "plotly.min.js"
SUMMARY_NAME = "recommendations.json"


def build_report(reports_dir: Path, out: Path, package_summary: Path | None = None) -> Path:
    """Write `out` (+ `assets/` and `recommendations.json` beside it) from whatever data exists in
    `reports_dir`; missing inputs are named on the page. Also merge the summary into
    `package_summary` when given. Returns `out`."""
    reports_dir, out = Path(reports_dir), Path(out)
    data = load(reports_dir)
    index = ConformanceIndex(data.conformance)
    recommendations = recommend(data.rows, index, peer_test(index))
    figures = Figures()
    machines = machine_views(data, index, recommendations, figures)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = summary.summarize(recommendations, summary.machines_of(data))
    summary.write(digest, out.parent / SUMMARY_NAME)
    if package_summary is not None:
        summary.write(digest, package_summary, merge_existing=True)
    write_assets(out.parent / "assets")
    page = render(
        machines=machines,
        figures=figures.specs,
        missing=data.missing + _missing_per_machine(machines),
        sources=_sources(data, out.parent),
        capabilities=capability_rows(),
        asv_href=_relative(data.asv_index, out.parent) if data.asv_index else None,
        asv_expected=_relative(reports_dir / "asv" / "html" / "index.html", out.parent),
        summary_href=SUMMARY_NAME,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out.write_text(page, encoding="utf-8")
    return out


def render(**context) -> str:
    """The page from `templates/index.html`."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    return environment.get_template("index.html").render(**context)


def write_assets(assets: Path) -> None:
    """plotly.js (from the installed plotly, never a CDN), the stylesheet and the page script."""
    assets.mkdir(parents=True, exist_ok=True)
    for name in STATIC_ASSETS:
        (assets / name).write_text((TEMPLATES / name).read_text(encoding="utf-8"), encoding="utf-8")
    plotly_js = plotly.offline.get_plotlyjs()
    target = assets / PLOTLY_ASSET
    if not target.is_file() or target.stat().st_size != len(plotly_js.encode("utf-8")):
        target.write_text(plotly_js, encoding="utf-8")


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _sources(data: ReportData, page_dir: Path) -> list[tuple[str, str]]:
    """(path relative to the page, detail) for each input read."""
    sources = []
    if data.results_csv is not None:
        dates = sorted(r.date for r in data.rows if r.date)
        span = f", dated {dates[0]} to {dates[-1]}" if dates else ""
        sources.append((_relative(data.results_csv, page_dir), f"{len(data.rows)} benchmark rows from {len({r.machine for r in data.rows})} machine(s){span}"))
    for name, run in sorted(data.conformance.items()):
        sources.append((_relative(run.path, page_dir), f"conformance of {name}: {len(run.records)} cells, created {run.created}"))
    return sources


def _missing_per_machine(machines) -> list[str]:
    notes = []
    for machine in machines:
        if not machine.dtypes:
            notes.append(f"{machine.name}: conformance results only, no benchmark results yet.")
        if not machine.conformance_from:
            notes.append(f"{machine.name}: no conformance results for this machine or its device type, so nothing is recommended there.")
        elif machine.conformance_from != [machine.name]:
            notes.append(f"{machine.name}: no conformance file of its own; verdicts taken from {', '.join(machine.conformance_from)} (same device type).")
    return notes
