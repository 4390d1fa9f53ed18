"""Building the page from fixture data: the recommendations the rule must give, valid plotly
figures, local assets only, and a page (not a crash) when inputs are missing."""
from __future__ import annotations

import argparse
import json
import re

import plotly.graph_objects as go
import pytest

from persample import recommendations
from persample.report.build import build_report
from persample.report.commands import add_commands
from persample.report.data import load
from persample.report.recommend import peer_test, recommend
from persample.report.verdicts import ConformanceIndex

from .synthetic import CPU, GPU, GPU_ONLY_BENCH, reports_directory

FIGURE = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return reports_directory(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def built(reports):
    page = build_report(reports, reports / "index.html")
    return page, page.read_text()


@pytest.fixture(scope="module")
def cases(reports):
    data = load(reports)
    index = ConformanceIndex(data.conformance)
    return {(r.key.machine, r.key.dtype, r.key.workload, r.key.batch_size): r for r in recommend(data.rows, index, peer_test(index))}


def test_the_fixture_gets_the_recommendations_its_construction_implies(cases):
    cpu_mlp = cases[(CPU, "float32", "mlp", 8)]
    assert cpu_mlp.best.row.method == "vmap"
    assert cpu_mlp.speedup_vs_loop == pytest.approx(9e-3 / 2.4e-4)
    assert cpu_mlp.best_peer.row.method == "opacus-ew"
    assert cpu_mlp.speedup_vs_peer == pytest.approx(1.2e-3 / 2.4e-4)
    assert cpu_mlp.overhead == pytest.approx(2.4e-4 / 4e-5)
    assert cpu_mlp.roofline_fraction == pytest.approx(1.6e-6 / 2.4e-4)
    assert cases[(CPU, "float32", "mlp", 256)].best.row.method == "hooks"
    # opacus-ew is the fastest on mnist_cnn but fails conformance there: never recommended
    for batch in (8, 64, 256):
        case = cases[(CPU, "float32", "mnist_cnn", batch)]
        assert case.best.row.method != "opacus-ew"
        assert "opacus-ew" in [e.row.method for e in case.excluded]
    # on the H100, captured vmap wins, except where vmap ran out of memory
    assert cases[(GPU, "float32", "mlp", 64)].best.row.label == "vmap + CUDA graph"
    oom = cases[(GPU, "float32", "mnist_cnn", 256)]
    assert oom.best.row.method == "hooks"
    assert any(e.row.method == "vmap" and e.exclusion_kind == "out of memory" for e in oom.excluded)
    # an erroring peer is not eligible, and the H200 borrows the H100's verdicts
    assert "opacus-hooks" not in cases[(GPU, "bfloat16", "mlp", 8)].ranking()
    assert "opacus-hooks" not in cases[(GPU_ONLY_BENCH, "bfloat16", "mlp", 8)].ranking()
    assert cases[(GPU_ONLY_BENCH, "float32", "mlp", 8)].best.verdict.borrowed


def test_the_page_has_every_section_and_only_local_assets(built):
    page, text = built
    assets = page.parent / "assets"
    assert (assets / "plotly.min.js").stat().st_size > 1_000_000
    assert (assets / "report.css").is_file() and (assets / "report.js").is_file()
    assert re.findall(r'<script src="([^"]+)"', text) == ["assets/plotly.min.js", "assets/report.js"]
    assert "cdn" not in text.lower() and "https://" not in text
    for machine in (CPU, GPU, GPU_ONLY_BENCH):
        assert f'id="machine-{machine}"' in text
    assert "vmap + CUDA graph" in text
    assert "out of memory" in text
    assert "grad_sample scaled by the batch size" in text  # the known deviation reaches the page
    assert "RuntimeError: expected scalar type BFloat16" in text
    assert f"{GPU_ONLY_BENCH}: no conformance file of its own; verdicts taken from {GPU}" in text
    assert "asv&#39;s site has not been published" in text or "asv's site has not been published" in text
    assert text.count('<table class="recommendations">') == 6  # 3 machines x 2 dtypes


def test_every_figure_is_valid_plotly_with_exact_numbers_in_its_hover(built):
    _, text = built
    figures = dict(FIGURE.findall(text))
    assert len(figures) == 3 * 2 * 2 + 2  # time and memory per machine and dtype, a heat map per conformance run
    for figure_id, spec in figures.items():
        figure = go.Figure(json.loads(spec.replace("<\\/", "</")))
        assert figure.data, figure_id
    time_plot = json.loads(figures[f"time-{CPU}-float32"])
    vmap_mlp = next(t for t in time_plot["data"] if t["name"] == "vmap" and t["xaxis"] == "x")
    assert vmap_mlp["x"] == [8, 64, 256]
    assert vmap_mlp["y"] == pytest.approx([2.4e-4, 1.92e-3, 7.68e-3])
    assert "240 µs" in vmap_mlp["text"][0] and "passes conformance" in vmap_mlp["text"][0]
    heatmap = json.loads(figures[f"conformance-{CPU}"])
    assert any("relative error 0.5" in cell for trace in heatmap["data"] if trace["type"] == "heatmap"
               for row in trace["text"] for cell in row)


def test_the_asv_site_is_linked_when_published(tmp_path):
    reports = reports_directory(tmp_path, results=False)
    (reports / "asv" / "html").mkdir(parents=True)
    (reports / "asv" / "html" / "index.html").write_text("<html></html>")
    text = build_report(reports, reports / "index.html").read_text()
    assert '<a href="asv/html/index.html">' in text


@pytest.mark.parametrize("results, conformance, expected", [
    (False, True, "No benchmark results"),
    (True, False, "No conformance results"),
    (False, False, "No machine has any results yet"),
])
def test_partial_data_builds_a_page_that_says_what_is_missing(tmp_path, results, conformance, expected):
    reports = reports_directory(tmp_path, results=results, conformance=conformance)
    text = build_report(reports, tmp_path / "site" / "index.html").read_text()
    assert expected in text
    if conformance:
        assert 'class="cell fail"' in text
    if results and not conformance:
        assert "no method both ran and passes conformance here" in text
        assert not json.loads((tmp_path / "site" / "recommendations.json").read_text())["machines"]


def test_an_unreadable_conformance_file_is_named_not_fatal(tmp_path):
    reports = reports_directory(tmp_path)
    (reports / "conformance" / "broken.json").write_text("{not json")
    text = build_report(reports, reports / "index.html").read_text()
    assert "broken.json was skipped (JSONDecodeError" in text


def test_the_package_summary_is_merged_by_machine(tmp_path, reports):
    packaged = tmp_path / "recommendations.json"
    packaged.write_text(json.dumps({"schema": recommendations.SCHEMA, "machines": {"a100-80gb": {"device": "cuda", "cases": {}}}, "workloads": {}}))
    build_report(reports, tmp_path / "site" / "index.html", package_summary=packaged)
    merged = json.loads(packaged.read_text())
    assert set(merged["machines"]) == {"a100-80gb", CPU, GPU, GPU_ONLY_BENCH}
    assert merged["machines"][CPU]["cases"]["float32"]["mlp"]["full"]["8"][0] == "vmap"
    assert merged["workloads"]["mnist_cnn"]["full"]["layers"] == ["Conv2d", "Linear"]


def test_the_report_command(tmp_path, reports, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "page.html"
    args = parser.parse_args(["report", "--reports-dir", str(reports), "--out", str(out)])
    assert args.run(args) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
