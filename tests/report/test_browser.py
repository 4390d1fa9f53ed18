"""The built page in headless Chromium, from disk and offline: no console error, no request off
the disk, and the recommendation tables, the plots and the conformance matrix are all there."""
from __future__ import annotations

import os
import shutil

import pytest

from persample.methods.registry import registered
from persample.report.build import build_report

from .chromium import Browser, find_chromium
from .synthetic import reports_directory

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); CI installs it"
)

PAGE_FACTS = """(() => {
  const text = (el) => (el.textContent || "").trim();
  const recommended = [...document.querySelectorAll("table.recommendations tbody td.best")].map(text);
  const figures = [...document.querySelectorAll(".figure[data-figure]")];
  return {
    recommendationTables: document.querySelectorAll("table.recommendations").length,
    recommended: recommended.filter((t) => t.length > 0).length,
    emptyRecommended: recommended.filter((t) => t.length === 0).length,
    figures: figures.length,
    rendered: figures.filter((f) => f.dataset.rendered === "done").length,
    plottedLines: document.querySelectorAll(".figure .scatterlayer .trace").length,
    heatmaps: document.querySelectorAll(".figure .heatmaplayer image").length,
    matrixCells: document.querySelectorAll("table.conformance td.cell").length,
    failCells: document.querySelectorAll("table.conformance td.cell.fail").length,
    unsupportedCells: document.querySelectorAll("table.conformance td.cell.unsupported").length,
    capabilityRows: document.querySelectorAll("table.capabilities tbody tr").length,
    clippedLegends: [...document.querySelectorAll(".figure .legend")]  // its items taller than its box
      .filter((legend) => legend.querySelector(".scrollbox").getBBox().height > legend.querySelector(".bg").getBBox().height + 1).length,
    failedFigures: window.persampleReport.failed,
  };
})()"""
POINT_OF = """((selector) => {
  const figure = document.querySelector(selector);
  figure.scrollIntoView();
  const box = figure.querySelector(".scatterlayer .trace .points path, .heatmaplayer image").getBoundingClientRect();
  return selector.includes("conformance") ? [box.x + 5, box.y + 5] : [box.x + box.width / 2, box.y + box.height / 2];
})"""
RENDERED_ALL = "window.persampleReport.pending === 0 && document.querySelectorAll('.figure[data-figure]:not([data-rendered=done])').length === 0"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    reports = reports_directory(tmp_path_factory.mktemp("browser"))
    return build_report(reports, reports / "index.html")


@pytest.fixture(scope="module")
def browser():
    chromium = Browser(CHROMIUM, timeout=60)
    yield chromium
    chromium.close()


def test_the_page_renders_offline_without_console_errors(browser, page, tmp_path_factory):
    browser.send("Emulation.setDeviceMetricsOverride", session=browser.session, width=1400, height=1000,
                 deviceScaleFactor=1, mobile=False)
    browser.open(page.as_uri())
    browser.wait_for("window.persampleReport && window.persampleReport.pending === 0 && window.persampleReport.rendered > 0")
    first = browser.evaluate(PAGE_FACTS)
    assert first["rendered"] >= 5  # the first dtype of each machine and the heat maps, before any click

    browser.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; }); true")
    browser.wait_for(RENDERED_ALL)
    facts = browser.evaluate(PAGE_FACTS)
    screenshot = browser.screenshot(tmp_path_factory.mktemp("screenshot") / "report.png")
    if os.environ.get("PERSAMPLE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["PERSAMPLE_SCREENSHOT"])

    assert hover_text(browser, '.figure[data-figure^="time-"]').startswith("loopbatch 8: ")
    assert "relative error" in hover_text(browser, '.figure[data-figure^="conformance-"]')
    assert browser.errors == []
    off_disk = [url for url in browser.requests if not url.startswith(("file://", "data:"))]
    assert off_disk == []
    assert facts["recommendationTables"] == 6 and facts["recommended"] == 54 and facts["emptyRecommended"] == 0
    assert facts["figures"] == facts["rendered"] == 14 and facts["failedFigures"] == []
    assert facts["plottedLines"] > 12 * 3 * 7
    assert facts["heatmaps"] >= 2
    assert facts["matrixCells"] == 2 * 2 * 21 and facts["failCells"] > 0 and facts["unsupportedCells"] > 0
    assert facts["capabilityRows"] == len(registered())
    assert facts["clippedLegends"] == 0  # every legend fits its figure
    assert screenshot.stat().st_size > 50_000


def hover_text(browser: Browser, selector: str) -> str:
    """Move the mouse onto the figure's first point (or heat-map cell) and read plotly's hover label."""
    x, y = browser.evaluate(f"{POINT_OF}({selector!r})")
    browser.send("Input.dispatchMouseEvent", session=browser.session, type="mouseMoved", x=x, y=y)
    return browser.wait_for("[...document.querySelectorAll('.hoverlayer .hovertext')].map((e) => e.textContent).join(' | ')")
