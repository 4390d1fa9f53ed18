"""`persample check path/to/file.py:factory`: every method on the user's own model.

The factory returns (model, inputs, targets) or (model, inputs, targets, loss_fn). Prints progress
(stderr) and the ranked table (stdout), writes check.json and index.html under --out. Exit status:
0 when every method checked is right or refuses; 1 when one of our methods (or one given with
--method) is wrong or fails on the model, with `--fail-on any` also a peer's; 2 when the check
could not run (the factory, the model or the batch cannot be used as given).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..bench.timing import threading_env
from .report import FAIL_ON

RELAUNCHED = "PERSAMPLE_CHECK_RELAUNCHED"
USAGE_ERROR = 2


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `persample check path/to/file.py:factory` (check and time every method on your own model) to
    `subparsers`.
    """
    parser = subparsers.add_parser(
        "check", help="check and time every method on your own model (path/to/file.py:factory)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("factory", help="'path/to/file.py:factory' or 'package.module:factory'")
    parser.add_argument("--method", action="append", default=[], metavar="MODULE:OBJECT",
                        help="also check this method (a persample.Method instance, class or factory); repeatable")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]",
                        help="check only these registered methods (plus those given with --method)")
    parser.add_argument("--dtype", action="append", default=None, metavar="DTYPE",
                        help="float32, float64, bfloat16 or float16; repeatable (default: the model's, plus bfloat16 on a GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: where the model is)")
    parser.add_argument("--batch-sizes", default=None, metavar="B[,B]",
                        help="batch sizes to time, resampled from the factory's batch (default: B/4, B, 4B)")
    parser.add_argument("--quick", action="store_true", help="one batch size, three timed steps (for CI)")
    parser.add_argument("--out", type=Path, default=Path("persample-check"),
                        help="directory for check.json and index.html (default: ./persample-check)")
    parser.add_argument("--no-html", action="store_true", help="write check.json only")
    parser.add_argument("--fail-on", choices=sorted(FAIL_ON), default="ours",
                        help="exit 1 when these are wrong or fail: ours (and --method ones; default) or any (peers too)")
    parser.add_argument("--no-record", action="store_true",
                        help="do not keep the ranking for method='auto' (default: kept in the local cache)")
    parser.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Run `persample check` with parsed `args`: write check.json (and index.html) under --out and print the
    table; returns the exit status (1 when --fail-on methods are wrong or fail, 2 for a usage error).
    """
    if getattr(args, "from_command_line", False):
        _relaunch_with_passive_threads()
    from .page import write_page
    from .run import check
    from .subject import load_factory

    from ..errors import Unsupported

    try:
        subject = load_factory(args.factory)
    except (ValueError, TypeError, ImportError, AttributeError, FileNotFoundError) as error:
        return _usage_error(f"{type(error).__name__}: {error}")
    methods = None
    if args.only or args.method:
        from ..methods.registry import registered

        names = [n for n in (args.only or "").split(",") if n] if args.only else [
            n for n, m in registered().items() if not m.capabilities.chooser]
        methods = [*names, *args.method]
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    except ValueError:
        return _usage_error(f"--batch-sizes takes positive integers separated by commas; got {args.batch_sizes!r}")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        report = check(subject.model, subject.call.to_user(), subject.targets, loss_fn=subject.loss_fn,
                       methods=methods, dtypes=args.dtype, device=args.device, batch_sizes=sizes, quick=args.quick,
                       record=not args.no_record, progress=say, name=subject.name)
    except (ValueError, TypeError, Unsupported) as error:  # the model or the batch cannot be checked as given
        return _usage_error(f"{type(error).__name__}: {error}")
    print(report.table())
    written = [report.write_json(args.out / "check.json")]
    if not args.no_html:
        written.append(write_page(report, args.out / "index.html"))
    print(f"\nwrote {', '.join(map(str, written))} ({report.seconds:.0f} s)")
    failures = report.failures(args.fail_on)
    if failures:
        print(f"FAILED: {', '.join(f'{r.method} ({r.dtype}) {r.status}' for r in failures)}", file=sys.stderr)
    return report.exit_code(args.fail_on)


def _usage_error(message: str) -> int:
    """Exit status 2 (the check could not run), told apart from 1 (a method is wrong)."""
    print(f"persample check: {message}", file=sys.stderr)
    return USAGE_ERROR


def _relaunch_with_passive_threads() -> None:
    """Restart this command once with the benchmark processes' environment (`threading_env`:
    passive OpenMP threads, huge pages for large tensors) set: both are read when torch loads or
    first allocates, and spinning threads on a small VM add tens of milliseconds to a step, page
    faults on fresh per-sample gradients more (see bench.timing)."""
    missing = threading_env()
    if not missing or os.environ.get(RELAUNCHED):
        return
    env = {**os.environ, **missing, RELAUNCHED: "1"}
    os.execve(sys.executable, [sys.executable, "-m", "persample.cli", *sys.argv[1:]], env)
