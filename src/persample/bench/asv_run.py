"""`persample bench`: asv for the current commit on this machine, in this Python environment.

Before asv starts, this writes asv's machine entry (with the GPU), calibrates the machine once, and
decides every case's skip here, in the same environment the benchmarks will run in: skipped cases
go to the outcomes log with their reasons and only runnable ones are selected (asv spawns one
process per case, even for a case it would skip). Results are saved under HEAD's hash.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..machine import default_device, machine_info
from .asv_machine import write_machine_entry
from .asv_publish import publish
from .calibration import ensure_calibrated
from .grid import GRID_ENV, Case, default_grid_name, get_grid
from .outcomes import COMMIT_ENV, FILENAME as OUTCOMES, OUTCOMES_ENV, append, entry
from .skips import skip_reason
from .timing import threading_env

DEFAULT_CONFIG = "asv.conf.json"
KINDS = ("time", "memory")


@dataclass(frozen=True)
class BenchOptions:
    """What `persample bench` runs: a quick subset or the full grid (`gpu` or `cpu`), a regex over case ids,
    the asv config, whether to measure the machine again, show asv's stderr and publish.
    """

    quick: bool = False  # a few cases, each run once (asv --quick)
    grid: str | None = None  # default: "gpu" with CUDA, else "cpu"
    cases: str | None = None  # a regex over case ids, e.g. "vmap-mlp"
    config: str = DEFAULT_CONFIG
    recalibrate: bool = False
    show_stderr: bool = False
    publish: bool = False


def repo_root(start: Path | None = None) -> Path:
    """The top of the git work tree containing `start` (default: the working directory). Raises
    `subprocess.CalledProcessError` outside a git repository.
    """
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start or Path.cwd(),
                         capture_output=True, text=True, check=True)
    return Path(top.stdout.strip())


def head_commit(repo: Path) -> str:
    """The full hash of HEAD in `repo`. Raises `subprocess.CalledProcessError` when git fails."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def asv_config(repo: Path, config: str) -> dict:
    """The asv configuration `config` (a JSON file relative to `repo`), parsed."""
    return json.loads((Path(repo) / config).read_text())


def selected_cases(cases: list[Case], quick: bool, pattern: str | None) -> list[Case]:
    """The grid's cases, narrowed to the quick ones (first batch size and mode) and/or a regex."""
    if quick:
        first = cases[0] if cases else None
        quick_workloads = {ref.partition(":")[0] for ref in get_grid("quick").workloads}  # tagged QUICK
        cases = [c for c in cases if c.workload in quick_workloads and c.variant == "eager"
                 and (c.batch_size, c.mode) == (first.batch_size, first.mode)]
    return [c for c in cases if re.search(pattern, c.id)] if pattern else cases


def selection_regex(cases: list[Case]) -> str:
    """asv's --bench regex matching exactly these cases' parameter tuples, in every benchmark."""
    tuples = "|".join(re.escape(", ".join(repr(p) for p in case.params())) for case in cases)
    return rf"\((?:{tuples})\)$"


def asv(repo: Path, arguments: list[str], env: dict[str, str] | None = None) -> int:
    """Run `python -m asv <arguments>` in `repo` with `env` added to the environment; returns its exit status."""
    command = [sys.executable, "-m", "asv", *arguments]
    return subprocess.run(command, cwd=repo, env={**os.environ, **(env or {})}).returncode


def run_bench(repo: Path, options: BenchOptions = BenchOptions()) -> int:
    """Run the benchmarks of this machine's grid for HEAD; returns asv's exit status."""
    results = Path(repo) / asv_config(repo, options.config)["results_dir"]
    device = default_device()
    machine = write_machine_entry(machine_info(device))
    print(f"persample bench: {ensure_calibrated(results, device, again=options.recalibrate).describe()}", flush=True)
    commit, grid = head_commit(repo), get_grid(options.grid or default_grid_name())
    cases = selected_cases(grid.cases(), options.quick, options.cases)
    reasons = {case: skip_reason(case, device) for case in cases}
    log = results / machine / OUTCOMES
    append(log, [entry(c, kind, "skipped", why, commit) for c, why in reasons.items() if why for kind in KINDS])
    runnable = [case for case in cases if not reasons[case]]
    print(f"persample bench: {machine}, grid {grid.name}, commit {commit[:8]}: {len(cases)} cases, "
          f"{len(cases) - len(runnable)} skipped (reasons in {log}), {len(runnable)} to run", flush=True)
    status = 0
    if runnable:
        arguments = ["run", "--config", options.config, "--python=same", "--set-commit-hash", commit,
                     "--machine", machine, "--bench", selection_regex(runnable)]
        arguments += ["--quick"] * options.quick + ["--show-stderr"] * options.show_stderr
        env = {GRID_ENV: grid.name, OUTCOMES_ENV: str(log), COMMIT_ENV: commit, **threading_env()}
        status = asv(repo, arguments, env=env)
    if options.publish:
        status = publish(repo, options.config) or status
    return status
