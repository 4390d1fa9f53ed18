"""What a newcomer needs from the page: their own machine first and marked, a plain word when there
are no GPU results, plots where every method is told apart (colour and marker) and the baseline and
the floor are drawn even at one batch size, legends that fit, and overheads below 1× called noise."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import asv
import pytest

from persample.methods.registry import registered
from persample.report.build import build_report
from persample.report.plots import TIME, batch_figure, legend_height
from persample.report.styles import BASELINE, FAILED_COLOR, FLOOR, TOL_MUTED, method_styles
from persample.report.verdicts import Verdict

from .synthetic import CPU, GPU, benchmark_rows, bench_row, conformance_records, reports_directory, write_conformance, write_results

FIGURE = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.S)
PASS = Verdict("pass", {"relative_error": 1e-7, "tolerance": {"relative": 1e-4}})


def sections(text: str) -> list[str]:
    """The machine sections' names, in page order."""
    return re.findall(r'<section class="machine[^"]*" id="machine-[^"]*">\s*<h2>([^<]+)', text)


def test_no_two_methods_share_both_colour_and_marker():
    names = [*registered(), *(f"plugin-{i}" for i in range(20))]
    styles = method_styles(names)
    assert len({(s.color, s.marker) for s in styles.values()}) == len(names)
    named = method_styles(list(registered()))
    assert len({s.marker for s in named.values()}) == len(named)  # each registered method has its own marker


def test_method_colours_are_colour_blind_safe_and_not_the_reference_or_failure_colours():
    colors = {style.color for style in method_styles(list(registered())).values()}
    assert colors <= set(TOL_MUTED)
    assert not colors & {BASELINE.color, FLOOR.color, FAILED_COLOR}
    assert len(colors) == min(len(registered()), len(TOL_MUTED))


def test_a_workload_measured_at_one_batch_size_still_shows_the_baseline_and_the_floor():
    rows = [bench_row(method=m, batch_size=256) for m in ("hooks", "vmap")]
    figure = batch_figure(rows, TIME, lambda row: PASS, method_styles(["hooks", "vmap"]))
    references = {t["name"]: t for t in figure["data"] if t["name"] in (BASELINE.name, FLOOR.name)}
    assert set(references) == {BASELINE.name, FLOOR.name}
    for trace in references.values():
        assert "markers" in trace["mode"] and trace["x"] == [256] and trace["marker"]["size"] >= 8


def test_methods_are_drawn_in_their_own_colour_and_marker_and_a_nonconformant_one_dotted_and_hollow():
    rows = [bench_row(method=m, batch_size=b) for m in ("hooks", "vmap") for b in (16, 64, 256)]
    styles = method_styles(["hooks", "vmap"])
    verdict = lambda row: PASS if row.method == "hooks" else Verdict("fail", {"reason": "relative error 0.5"})  # noqa: E731
    figure = batch_figure(rows, TIME, verdict, styles)
    assert figure["layout"]["xaxis"]["tickvals"] == [16, 64, 256]  # the axis names the measured batch sizes
    traces = {t["name"]: t for t in figure["data"]}
    hooks, vmap = traces["hooks"], traces["vmap"]
    assert (hooks["line"]["color"], hooks["marker"]["symbol"], hooks["line"]["dash"]) == (
        styles["hooks"].color, styles["hooks"].marker, "solid")
    assert (vmap["marker"]["symbol"], vmap["line"]["dash"]) == (f"{styles['vmap'].marker}-open", "dot")


def test_the_figure_is_as_tall_as_its_legend_needs():
    methods = list(registered())
    rows = [bench_row(method=m, batch_size=b) for m in methods for b in (4, 16, 64)]
    figure = batch_figure(rows, TIME, lambda row: PASS, method_styles(methods))
    entries = sum(1 for trace in figure["data"] if trace["showlegend"])
    assert entries == len(methods) + 2  # the methods, the baseline and the floor
    assert figure["layout"]["height"] >= legend_height(entries)
    assert figure["layout"]["legend"]["tracegroupgap"] <= 5


@pytest.fixture(scope="module")
def cpu_only(tmp_path_factory):
    """A CPU machine with results, committed by someone else, and nothing from a GPU."""
    reports = tmp_path_factory.mktemp("cpu-only") / "reports"
    write_conformance(reports, CPU, "cpu", conformance_records("cpu"))
    rows = benchmark_rows(CPU, "cpu")
    for row in rows:
        if row["method"] == "vmap" and row["workload"] == "mlp" and row["batch_size"] == 8:
            row.update(median_s=3.5e-5, spread_s=6e-6)  # the backward (4e-5 s) within the spread
        if row["method"] == "vmap" and row["workload"] == "mlp" and row["batch_size"] == 64:
            row.update(median_s=2e-4, spread_s=1e-6)  # the backward (3.2e-4 s) far beyond it
    write_results(reports / "results.csv", rows)
    return reports


def test_the_readers_machine_comes_first_and_is_marked(tmp_path):
    reports = reports_directory(tmp_path)
    text = build_report(reports, reports / "index.html", this_machine=CPU).read_text()
    assert sections(text)[0].strip() == CPU and sections(text)[1].strip() == GPU
    assert text.count("this machine: the one that built this page") == 1
    assert f"{CPU}</a> (this machine)" in text


def test_a_reader_whose_machine_has_no_results_is_told_so(cpu_only):
    text = build_report(cpu_only, cpu_only / "index.html", this_machine="cpu-intel-xeon-2core").read_text()
    assert "This machine (cpu-intel-xeon-2core) has no benchmark results here yet" in text
    assert "this machine: the one that built this page" not in text


def test_the_page_says_when_there_are_no_gpu_results(cpu_only, tmp_path):
    text = build_report(cpu_only, cpu_only / "index.html", this_machine=CPU).read_text()
    assert "No GPU results: every machine here is a CPU" in text
    with_gpu = build_report(reports_directory(tmp_path), tmp_path / "index.html", this_machine=CPU).read_text()
    assert "No GPU results" not in with_gpu


def test_an_overhead_below_one_is_flagged_as_noise_or_as_beyond_its_spread(cpu_only):
    text = build_report(cpu_only, cpu_only / "index.html", this_machine=CPU).read_text()
    cells = re.findall(r'<td class="num noise"[^>]*>(.*?)</td>', text, re.S)
    assert len(cells) == 4  # the MLP at batch 8 and 64, in both dtypes
    within = [cell for cell in cells if cell.startswith("0.875× ± 0.15×")]
    beyond = [cell for cell in cells if cell.startswith("0.625× ± 0.00312×")]
    assert len(within) == len(beyond) == 2
    assert all("≈ 1×, within noise" in cell for cell in within)
    assert all("below 1×, beyond the spread" in cell for cell in beyond)
    figures = {name: json.loads(spec.replace("<\\/", "</")) for name, spec in FIGURE.findall(text)}
    assert all(fig["layout"]["height"] >= legend_height(sum(t.get("showlegend", False) for t in fig["data"]))
               for name, fig in figures.items() if name.startswith(("time-", "memory-")))


def test_the_link_to_asvs_site_says_how_to_open_it(tmp_path):
    reports = reports_directory(tmp_path)
    html = reports / "asv" / "html"
    html.mkdir(parents=True)
    shutil.copy(Path(asv.__file__).parent / "www" / "index.html", html / "index.html")
    text = build_report(reports, reports / "index.html", this_machine=CPU).read_text()
    assert "must be served over HTTP" in text and "needs network access" in text
