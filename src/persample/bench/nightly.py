"""The nightly job: asv for HEAD in a pinned environment asv builds (asv.nightly.conf.json), then
the HTML (`asv publish`) and reports/results.csv (`persample collect`). scripts/nightly-bench runs
it; docs/benchmarks.md has the cron line and a GitHub Actions workflow.

    python -m persample.bench.nightly run [--copy-html-to DIR] [--recalibrate]
    python -m persample.bench.nightly install-accelerator   # asv's install step, inside the new env
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..machine import default_device, machine_info
from .asv_machine import write_machine_entry
from .calibration import ensure_calibrated
from .collect import collect
from .commands import DEFAULT_PYTEST_JSON
from .outcomes import COMMIT_ENV, FILENAME as OUTCOMES, OUTCOMES_ENV
from .asv_publish import publish
from .asv_run import asv, asv_config, head_commit, repo_root
from .timing import threading_env

NIGHTLY_CONFIG = "asv.nightly.conf.json"
CONSTRAINTS = Path("constraints") / "cpu.txt"


def run_nightly(repo: Path, config: str = NIGHTLY_CONFIG, copy_html_to: Path | None = None,
                recalibrate: bool = False) -> int:
    """Benchmark HEAD on this machine in asv's pinned environment; publish; collect."""
    conf = asv_config(repo, config)
    results = Path(repo) / conf["results_dir"]
    device = default_device()
    machine = write_machine_entry(machine_info(device))
    ensure_calibrated(results, device, again=recalibrate)
    commit = head_commit(repo)
    env = {OUTCOMES_ENV: str(results / machine / OUTCOMES), COMMIT_ENV: commit, **threading_env()}
    if "PIP_CONSTRAINT" not in os.environ:  # the pins; on a GPU host PyPI's torch wheel is the CUDA build
        env["PIP_CONSTRAINT"] = str(Path(repo) / CONSTRAINTS)
    status = asv(repo, ["run", "--config", config, "--machine", machine, "--show-stderr", f"{commit}^!"], env=env)
    status = publish(repo, config) or status
    pytest_jsons = [Path(p) for p in glob.glob(str(Path(repo) / DEFAULT_PYTEST_JSON))]
    collect(results, pytest_jsons, Path(repo) / "reports" / "results.csv")
    if copy_html_to:
        shutil.copytree(Path(repo) / conf["html_dir"], copy_html_to, dirs_exist_ok=True)
    return status


def install_accelerator() -> int:
    """In a fresh environment on a GPU host: JAX's CUDA plugin, at the installed JAX's version."""
    import torch

    if not torch.cuda.is_available():
        return 0
    jax = importlib.metadata.version("jax")
    return subprocess.run([sys.executable, "-m", "pip", "install", f"jax[cuda12]=={jax}"]).returncode


def main(argv: list[str] | None = None) -> int:
    """`python -m persample.bench.nightly run [--config ...] [--copy-html-to DIR] [--recalibrate]` (benchmark
    HEAD, publish asv's HTML, collect the table) or `install-accelerator` (asv's install step:
    jax[cuda12] where CUDA is present); returns the exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m persample.bench.nightly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="benchmark HEAD, publish the HTML, collect the table")
    run.add_argument("--config", default=NIGHTLY_CONFIG)
    run.add_argument("--copy-html-to", type=Path, help="also copy the HTML here (a web server's directory)")
    run.add_argument("--recalibrate", action="store_true")
    commands.add_parser("install-accelerator", help="asv's install step: jax[cuda12] where CUDA is present")
    args = parser.parse_args(argv)
    if args.command == "install-accelerator":
        return install_accelerator()
    return run_nightly(repo_root(), args.config, args.copy_html_to, args.recalibrate)


if __name__ == "__main__":
    sys.exit(main())
