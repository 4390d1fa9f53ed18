"""`pip install persample` is all a library maintainer needs to run the conformance suite against
their own method, from any directory.

The wheel is built from this tree (setuptools, as pip builds it) and installed with the core and
`test` extras only (torch pinned to the CPU build by constraints/cpu.txt) into a fresh virtual
environment. From an empty temporary directory, the example plugin method is checked in float32
through `persample conformance` on `mlp` and on `keyword_inputs` (which it fails, as the maintainer's
own deviations file records), and through the opt-in pytest plugin on `mlp`; the results land where
they were told to. About a minute on 2 cores, half of it building and installing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock  # a dependency of torch

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "src")  # what setuptools reads to build the wheel
PLUGIN_METHOD = f"{ROOT / 'examples' / 'torch_func_plugin.py'}:method"
CELL = "my-vmap-mlp-float32-cpu"
DEVIATION = "my-vmap-keyword_inputs-float32-cpu"  # the example takes one Tensor, not keyword inputs
MY_DEVIATIONS = """\
[[deviation]]
method = "my-vmap"
workloads = ["keyword_inputs"]
seen_on_example_batch = true
reason = "my-vmap vmaps over one Tensor of inputs: keyword inputs (a dict) are not supported yet"
"""

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("conformance-install")]


@dataclass(frozen=True)
class Environment:
    """A virtual environment, and an empty directory to run in that is no persample checkout."""

    root: Path
    workdir: Path

    def run(self, *command: str) -> subprocess.CompletedProcess:
        """`command` (a program of the environment, then its arguments) run in `workdir`, with
        nothing of this checkout's environment on its paths."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        program, *arguments = command
        return subprocess.run([str(self.root / "bin" / program), *arguments], cwd=self.workdir, env=env,
                              capture_output=True, text=True, timeout=600)


def build_wheel(into: Path) -> Path:
    """The wheel of this tree, built from a copy of it (the build writes into its source tree)."""
    shutil.rmtree(into, ignore_errors=True)  # what a failed attempt left
    source = into / "source"
    source.mkdir(parents=True)
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (wheel,) = (into / "dist").glob("persample-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> None:
    """A fresh virtual environment (not this one's packages) with the wheel, its core dependencies
    and its `test` extra; pip reuses the wheels it finds on this machine."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=60)
    env = {**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints" / "cpu.txt")}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           f"{wheel}[test]"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    """Built once per run, even where xdist spreads these tests over workers (their group marker
    keeps them on one only with a pytest that loadgroup works with): the first builds, others wait."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "conformance-install"
    root.mkdir(exist_ok=True)
    environment = Environment(root / "venv", root / "work")
    with FileLock(root / "building.lock"):
        if not (root / "ready").exists():
            install(build_wheel(root / "build"), environment.root)
            environment.workdir.mkdir(exist_ok=True)
            (environment.workdir / "my_deviations.toml").write_text(MY_DEVIATIONS)
            (root / "ready").touch()
    return environment


def records(path: Path) -> dict[str, dict]:
    return {record["id"]: record for record in json.loads(path.read_text())["records"]}


def test_the_environment_runs_the_installed_wheel_with_no_optional_method_package(installed):
    done = installed.run("python", "-c", "import importlib.util as u, persample.conformance.suite as s; "
                                         "print(s.__file__); print([m for m in ('triton', 'jax', 'opacus') if u.find_spec(m)])")
    assert done.returncode == 0, done.stderr[-3000:]
    suite, optional = done.stdout.splitlines()
    assert Path(suite).is_relative_to(installed.root) and optional == "[]", done.stdout


def test_persample_conformance_checks_a_plugin_method_from_any_directory(installed):
    done = installed.run("persample", "conformance", "--method", PLUGIN_METHOD, "--workload", "mlp", "--workload",
                         "keyword_inputs", "--mode", "float32", "--deviations", "my_deviations.toml", "--results", "out", "-rA")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "-p persample.conformance.plugin --pyargs persample.conformance.suite" in done.stdout
    assert f"test_cell[{CELL}]@mlp" in done.stdout, "xdist runs each workload's cells on one worker (loadgroup)"
    (results,) = (installed.workdir / "out").glob("*.json")  # out/<machine>.json, as told
    cells = records(results)
    assert set(cells) == {CELL, DEVIATION}, "only the slice asked for, in float32 only"
    assert (cells[CELL]["outcome"], cells[CELL]["verdict"]) == ("pass", "pass")
    assert (cells[DEVIATION]["outcome"], cells[DEVIATION]["verdict"]) == ("fail", "xfail"), "covered by my file only"


def test_the_pytest_plugin_runs_the_suite_when_asked_with_prefixed_options(installed):
    done = installed.run("python", "-m", "pytest", "-q", "-p", "persample.conformance.plugin", "--pyargs",
                         "persample.conformance.suite", "--persample-method", PLUGIN_METHOD, "--persample-workload", "mlp",
                         "--persample-mode", "float32", "--persample-results", "results/mine.json")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "my-vmap" in done.stdout  # the terminal summary of the matrix
    assert set(records(installed.workdir / "results" / "mine.json")) == {CELL}


def test_a_pytest_run_that_does_not_ask_for_the_plugin_gets_none_of_its_options(installed):
    done = installed.run("python", "-m", "pytest", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--persample-" not in done.stdout and "--method" not in done.stdout
    asked = installed.run("python", "-m", "pytest", "-p", "persample.conformance.plugin", "--help")
    assert "--persample-method" in asked.stdout and "--method" not in asked.stdout
