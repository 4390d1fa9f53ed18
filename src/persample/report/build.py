"""`build_report`: the offline method-selection page from the conformance results and the
benchmark table, with plotly.js and the stylesheet written as local assets next to it."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import jinja2
import plotly.offline

from .. import recommendations as store
from ..bench.asv_publish import how_to_open
from ..machine import machine_info
from .capabilities import capability_rows
from .data import ReportData, load
from .format import FILTERS
from .recommend import peer_test, recommend
from .recommendation_summary import machines_of, summarize_recommendations
from .verdicts import ConformanceIndex
from .views import Figures, machine_views

TEMPLATES = Path(__file__).with_name("templates")
STATIC_ASSETS = ("report.css", "report.js")
PLOTLY_ASSET = "plotly.min.js"
SUMMARY_NAME = "recommendations.json"


def build_report(reports_dir: Path, out: Path, package_summary: Path | None = None,
                 this_machine: str | None = None) -> Path:
    """Write `out` (+ `assets/` and `recommendations.json` beside it) from whatever data exists in
    `reports_dir`; missing inputs are named on the page. The summary is also merged into this
    machine's local cache (`persample.recommendations.local_cache`, what `auto` reads before the
    packaged file) and, when given, into `package_summary`. `this_machine`: the reader's machine,
    shown first and marked (default: the machine building the page). Returns `out`."""
    reports_dir, out = Path(reports_dir), Path(out)
    this_machine = this_machine or machine_info()["name"]
    data = load(reports_dir)
    index = ConformanceIndex(data.conformance)
    recommendations = recommend(data.rows, index, peer_test(index))
    figures = Figures()
    machines = machine_views(data, index, recommendations, figures, this_machine)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = summarize_recommendations(recommendations, machines_of(data))
    store.write(digest, out.parent / SUMMARY_NAME)
    store.write(digest, store.local_cache() / store.FILE_NAME, merge_existing=True)  # a local measurement wins
    if package_summary is not None:
        store.write(digest, package_summary, merge_existing=True)
    write_assets(out.parent / "assets")
    page = render(
        machines=machines,
        figures=figures.specs,
        missing=_missing_overall(machines, this_machine) + data.missing + _missing_per_machine(machines),
        sources=_sources(data, out.parent),
        capabilities=capability_rows(),
        asv_href=_relative(data.asv_index, out.parent) if data.asv_index else None,
        asv_expected=_relative(reports_dir / "asv" / "html" / "index.html", out.parent),
        asv_advice=how_to_open(data.asv_index.parent) if data.asv_index else None,
        summary_href=SUMMARY_NAME,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out.write_text(page, encoding="utf-8")
    return out


def render(template: str = "index.html", **context) -> str:
    """The page (or, for a test, one part of it) from `templates/<template>`, as HTML text. Raises
    `jinja2.UndefinedError` when the context lacks a variable the template uses."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    return environment.get_template(template).render(**context)


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


def _missing_overall(machines, this_machine: str) -> list[str]:
    """What a reader misses first: results of their own machine, and any GPU results at all."""
    notes = []
    if not any(machine.own and machine.dtypes for machine in machines):
        notes.append(f"This machine ({this_machine}) has no benchmark results here yet: `tox -e main` (or "
                     "`persample run`) measures it and puts it first on this page.")
    if not any(machine.device == "cuda" for machine in machines):
        notes.append("No GPU results: every machine here is a CPU, so nothing on this page says which method "
                     "is fastest on a GPU. README, \"Running on a GPU\", says how to add one.")
    return notes


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
