"""The conformance suite's entry points, as a specification: one definition of each option with two
spellings (`--persample-method` for the opt-in plugin, `--method` too in this repository), what the
options select, and the command `persample conformance` runs in a checkout and outside one.
(tests/test_conformance_install.py runs the installed wheel.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from persample import main_job
from persample.conformance import choices
from persample.conformance.options import OPTIONS, given, long_spelling

ROOT = Path(__file__).resolve().parents[1]


def config(rootpath: Path = ROOT, **chosen) -> SimpleNamespace:
    """A stand-in for pytest's config with these option values (the rest at their defaults)."""
    values = {o.dest: [] if o.repeatable else None for o in OPTIONS}
    values.update({f"persample_{name}": value for name, value in chosen.items()})
    return SimpleNamespace(getoption=values.__getitem__, rootpath=rootpath)


def test_every_option_is_spelled_with_the_persample_prefix_for_the_plugin():
    assert [o.long for o in OPTIONS] == ["--persample-method", "--persample-workload", "--persample-mode",
                                         "--persample-device", "--persample-results", "--persample-deviations"]


def test_short_spellings_become_long_ones_and_nothing_else_changes():
    args = ["--method", "vmap", "--mode=all", "-k", "mlp", "--methodical", "--persample-workload", "mlp", "-n", "2"]
    assert long_spelling(args) == ["--persample-method", "vmap", "--persample-mode=all", "-k", "mlp", "--methodical",
                                   "--persample-workload", "mlp", "-n", "2"]


@pytest.mark.parametrize("args, expected", [
    (["--mode", "float32"], True), (["--persample-mode=all"], True), (["--model", "x"], False), (["-k", "mode"], False),
])
def test_an_option_is_given_in_either_spelling(args, expected):
    assert given(args, "mode") is expected


@pytest.mark.parametrize("results, expected", [
    (None, ROOT / "reports" / "conformance" / "box.json"),   # the default, under pytest's rootdir
    ("/tmp/mine.json", Path("/tmp/mine.json")),              # a file
    ("/tmp/ci-results", Path("/tmp/ci-results/box.json")),   # a directory: <machine>.json in it
])
def test_results_go_to_a_file_or_a_directory_of_the_users_choice(results, expected):
    assert choices.results_path(config(results=results), "box") == expected


@pytest.mark.parametrize("methods, expected", [(["vmap"], set()), (["hooks", "vmap"], {"hooks"})])
def test_the_layer_rules_are_checked_for_the_selected_methods_that_compute_with_them(methods, expected):
    assert {m.name for m in choices.rule_methods(config(method=methods))} == expected


def test_without_a_method_option_the_layer_rules_of_hooks_expand_and_kernel_are_checked():
    assert {"hooks", "expand", "kernel"} <= {m.name for m in choices.rule_methods(config())}  # and plugins' rules


@pytest.fixture
def commands(monkeypatch) -> list[list[str]]:
    """The commands `run_conformance` runs (not run)."""
    ran: list[list[str]] = []
    monkeypatch.setattr(main_job.subprocess, "run", lambda command, **_: ran.append(command) or SimpleNamespace(returncode=0))
    return ran


def test_persample_conformance_outside_a_checkout_runs_the_installed_suite_through_the_plugin(commands):
    main_job.run_conformance(None, ["--method", "mylib.plugin:method", "--results", "out"], every_mode=True)
    (command,) = commands
    assert command[command.index("-p"):] == [
        "-p", "persample.conformance.plugin", "--pyargs", "persample.conformance.suite",
        "--persample-method", "mylib.plugin:method", "--persample-results", "out", "--persample-mode", "all"]


def test_persample_conformance_in_a_checkout_runs_its_conformance_directory_in_every_mode_unless_one_is_given(commands):
    main_job.run_conformance(ROOT, ["--method", "vmap"], every_mode=True)
    main_job.run_conformance(ROOT, ["--persample-mode", "float32"], every_mode=True)
    main_job.run_conformance(ROOT, [])  # the main job: the CI profile
    every, one, ci = (command[command.index(str(ROOT / "conformance")):] for command in commands)
    assert every == [str(ROOT / "conformance"), "--method", "vmap", "--mode", "all"]
    assert one == [str(ROOT / "conformance"), "--persample-mode", "float32"]
    assert ci == [str(ROOT / "conformance")]


def test_a_directory_with_a_conformance_conftest_of_its_own_is_not_taken_for_a_persample_checkout(tmp_path, monkeypatch):
    (tmp_path / "conformance").mkdir()
    (tmp_path / "conformance" / "conftest.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main_job.checkout() != tmp_path


def test_this_repository_takes_both_spellings_of_an_option(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_matrix.py", "--collect-only", "-q",
                           "-p", "no:xdist", "--method", "vmap", "--persample-method", "hooks", "--workload", "mlp",
                           "--persample-mode", "float32", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "test_cell[vmap-mlp-float32-cpu]" in done.stdout and "test_cell[hooks-mlp-float32-cpu]" in done.stdout


def test_the_plugin_leaves_tests_that_are_not_the_suites_alone(tmp_path):
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture(params=['a', 'b'])\n"
        "def method(request):\n    return request.param\n\n"
        "def test_mine(method):\n    assert method in 'ab'\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "persample.conformance.plugin",
                           "test_mine.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout and not (tmp_path / "reports").exists()
