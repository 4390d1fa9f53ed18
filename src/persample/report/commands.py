"""`persample report`: build the method-selection page (and, when asked, refresh the summary
shipped in the package for `auto`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..recommendations import PACKAGED


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `persample report [--reports-dir reports] [--out reports/index.html]`."""
    parser = subparsers.add_parser(
        "report", help="build reports/index.html: which method is correct and fastest where",
        description="Build the offline method-selection page from reports/conformance/*.json and "
        "reports/results.csv; missing inputs are named on the page.",
    )
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where the results are (default: reports)")
    parser.add_argument("--out", type=Path, default=None, help="the page to write (default: <reports-dir>/index.html)")
    parser.add_argument(
        "--package-summary", action="store_true",
        help=f"also merge the recommendations into {PACKAGED} (the data the package ships for method='auto'; "
        "a maintainer's step before a release). By default they go to reports-dir and this machine's local cache",
    )
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Run `persample report` with parsed `args`: build the page (and, with --package-summary, update the
    packaged recommendations); returns 0. Raises `SystemExit` when the package is not writable for
    --package-summary.
    """
    from .build import build_report

    out = args.out or args.reports_dir / "index.html"
    package_summary = PACKAGED if args.package_summary else None
    if package_summary is not None and not os.access(PACKAGED.parent, os.W_OK):
        raise SystemExit(f"cannot write {PACKAGED}: the package is not writable here (install it editable)")
    page = build_report(args.reports_dir, out, package_summary=package_summary)
    print(f"wrote {page}" + (f"; updated {package_summary}" if package_summary else ""))
    return 0
