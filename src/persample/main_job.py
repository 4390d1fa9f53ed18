"""`persample conformance` (the pytest matrix on this machine) and `persample run`, the main job:
conformance, then the quick benchmark, then the tidy table and reports/index.html."""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .conformance.options import given, long_spelling
from .machine import default_device


PLUGIN = "persample.conformance.plugin"
SUITE = "persample.conformance.suite"


def suite_arguments(repo: Path | None, pytest_args: list[str]) -> list[str]:
    """pytest's arguments that select the suite: this checkout's conformance/ (which takes either
    spelling of the options), or the installed suite through the opt-in plugin (long spellings)."""
    if repo is not None:
        return [str(repo / "conformance"), *pytest_args]
    return ["-p", PLUGIN, "--pyargs", SUITE, *long_spelling(pytest_args)]


def conformance_command(repo: Path | None, pytest_args: list[str]) -> list[str]:
    """The pytest command line of the conformance suite; parallel on a CPU when xdist is there
    (one GPU is shared badly by several workers, so a GPU runs it in one process)."""
    command = [sys.executable, "-m", "pytest", "-q"]
    if default_device().type == "cpu" and importlib.util.find_spec("xdist") is not None:
        workers = max(1, min(os.cpu_count() or 1, 4))
        command += ["-n", str(workers), "--dist", "loadgroup"]
    return command + suite_arguments(repo, pytest_args)


def run_conformance(repo: Path | None, pytest_args: list[str], every_mode: bool = False) -> int:
    """Run the conformance matrix of `repo` (a checkout), or the installed suite when `repo` is None,
    from the current directory (relative paths in the arguments start there); the results go to
    reports/conformance/<machine>.json under pytest's rootdir (the checkout, or the current
    directory's project) unless `--results` says where. Returns pytest's code.

    `every_mode`: the full product of modes this device offers (unless a mode is given); else the
    CI profile, float32 and one reduced-precision mode per family."""
    if every_mode and not given(pytest_args, "mode"):
        pytest_args = [*pytest_args, "--mode", "all"]
    command = conformance_command(repo, pytest_args)
    print("$", " ".join(command), flush=True)
    return subprocess.run(command).returncode


def run_main_job(repo: Path, pytest_args: list[str], skip_bench: bool = False) -> int:
    """Conformance, quick benchmark, collect, report. Every step runs even if an earlier one
    fails, so the page shows what failed; the exit code is the first failure's."""
    from .bench import run_quick_benchmark
    from .bench.collect import collect
    from .report.build import build_report

    reports = repo / "reports"
    codes = [run_conformance(repo, pytest_args)]
    if not skip_bench:
        try:
            quick_json = run_quick_benchmark(reports, repo)
        except subprocess.CalledProcessError as error:
            print(f"quick benchmark failed (exit {error.returncode}); the report shows what there is")
            codes.append(error.returncode)
        else:
            print(f"quick benchmark: {quick_json}")
    pytest_jsons = sorted((reports / "pytest-benchmark").glob("*.json"))
    table = collect(reports / "asv" / "results", pytest_jsons, reports / "results.csv")
    print(f"{reports / 'results.csv'}: {len(table)} rows")
    page = build_report(reports, reports / "index.html")
    print(f"wrote {page}")
    return next((code for code in codes if code), 0)


def checkout() -> Path | None:
    """The persample checkout to run in: the current directory if it is one, else the one this
    package is installed from (an editable install); None for an installed package."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "conformance" / "conftest.py").is_file() and (candidate / "src" / "persample").is_dir():
            return candidate
    return None


def _repo() -> Path:
    """The checkout the main job runs in (it writes reports/ there and benchmarks with its tests)."""
    repo = checkout()
    if repo is None:
        raise SystemExit("run this from the persample repository (conformance/ not found)")
    return repo


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `persample conformance` (the matrix here, in every mode this device offers) and `persample run` (the
    main job: conformance, the quick benchmark, then the report) to `subparsers`.
    """
    conformance = subparsers.add_parser(
        "conformance", help="run the conformance matrix here, in every mode this device offers, from this "
        "checkout or from the installed package anywhere (extra arguments go to pytest, e.g. --method vmap, "
        "--method mylib.plugin:method, --mode float32, --results DIR, --deviations FILE)")
    conformance.set_defaults(run=lambda args: run_conformance(checkout(), args.pytest_args, every_mode=True))
    conformance.add_argument("pytest_args", nargs=argparse.REMAINDER)

    run = subparsers.add_parser(
        "run", help="the main job: conformance + quick benchmark on this machine, then reports/index.html")
    run.add_argument("--no-bench", action="store_true", help="skip the quick benchmark")
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra arguments for the conformance pytest run")
    run.set_defaults(run=lambda args: run_main_job(_repo(), args.pytest_args, args.no_bench))
