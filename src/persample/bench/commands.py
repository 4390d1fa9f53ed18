"""`persample bench` (asv for the current commit on this machine) and `persample collect` (every
machine's results as reports/results.csv); `persample.cli` adds them through `add_commands`."""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

from .grid import GRIDS

DEFAULT_PYTEST_JSON = "reports/pytest-benchmark/*.json"


def _bench(args: argparse.Namespace) -> int:
    from .asv_publish import publish
    from .asv_run import BenchOptions, repo_root, run_bench

    if args.publish_only:
        return publish(repo_root(), args.config)
    options = BenchOptions(quick=args.quick, grid=args.grid, cases=args.cases, config=args.config,
                           recalibrate=args.recalibrate, show_stderr=args.show_stderr, publish=args.publish)
    return run_bench(repo_root(), options)


def _collect(args: argparse.Namespace) -> int:
    from .collect import collect

    patterns = args.pytest_json or [DEFAULT_PYTEST_JSON]
    jsons = sorted({Path(p) for pattern in patterns for p in glob.glob(pattern)})
    table = collect(Path(args.asv_results), jsons, Path(args.out))
    counts = {status: sum(r["status"] == status for r in table) for status in ("ok", "skipped", "failed")}
    machines = sorted({r["machine"] for r in table})
    print(f"{args.out}: {len(table)} rows from {len(machines)} machine(s) ({', '.join(machines)}); "
          + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `persample bench` (asv on this commit) and `persample collect` (every machine's results into
    results.csv) to `subparsers`.
    """
    bench = subparsers.add_parser("bench", help="run the asv benchmarks for the current commit on this machine")
    bench.add_argument("--quick", action="store_true", help="a few cases (mlp, mnist_cnn), each run once")
    bench.add_argument("--grid", choices=sorted(GRIDS), default=None,
                       help="which grid (default: gpu with CUDA, else the reduced cpu grid)")
    bench.add_argument("--cases", metavar="REGEX", help="only cases whose id matches, e.g. 'vmap-mlp-'")
    bench.add_argument("--config", default="asv.conf.json", help="asv configuration (default: asv.conf.json)")
    bench.add_argument("--recalibrate", action="store_true", help="measure bandwidth and matmul throughput again")
    bench.add_argument("--show-stderr", action="store_true", help="show the benchmarks' output")
    bench.add_argument("--publish", action="store_true", help="then build the asv HTML (reports/asv/html)")
    bench.add_argument("--publish-only", action="store_true", help="only build the asv HTML of the results there are")
    bench.set_defaults(run=_bench)

    collect = subparsers.add_parser("collect", help="all machines' benchmark results -> reports/results.csv")
    collect.add_argument("--asv-results", default="reports/asv/results", help="asv's results directory")
    collect.add_argument("--pytest-json", action="append", default=None, metavar="GLOB",
                         help=f"pytest-benchmark JSON files (repeatable; default {DEFAULT_PYTEST_JSON})")
    collect.add_argument("--out", default="reports/results.csv", help="the table to write")
    collect.set_defaults(run=_collect)
