"""The method-selection report: which per-sample-gradient method is correct and fastest where.

`build_report(reports_dir, out)` (in `build`) turns the conformance results and the benchmark
table into one offline HTML page; `recommend` holds the selection rule that `method="auto"` shares.
Heavy imports (jinja2, plotly) stay inside `build` and `plots`, so `auto` never pays for them.
"""
