"""`persample run | conformance | check | bench | collect | report | methods | workloads`."""
from __future__ import annotations

import argparse
import sys

# Each area adds its own sub-commands through `add_commands(subparsers)`. These modules are small and
# import nothing heavy beyond what `import persample` already holds (measured: about 5 ms together).
from . import main_job
from .bench import commands as bench_commands
from .modelcheck import commands as check_commands
from .report import commands as report_commands


def _methods(args: argparse.Namespace) -> int:
    from .methods.registry import registered

    for name, method in registered().items():
        why = method.unavailable_reason()
        caps = method.capabilities
        status = "ok" if why is None else f"unavailable: {why}"
        print(f"{name:18s} {'peer' if caps.peer else 'ours':5s} {status:14s} {caps.summary}")
    return 0


def _workloads(args: argparse.Namespace) -> int:
    from .workloads import all_workloads

    for workload in all_workloads():
        print(f"{workload.name:18s} {','.join(sorted(workload.tags)):32s} {workload.description}")
    return 0


COMMAND_MODULES = (bench_commands, report_commands, main_job, check_commands)  # in `--help` order


def build_parser() -> argparse.ArgumentParser:
    """The `persample` argument parser: `methods`, `workloads`, then each of `COMMAND_MODULES`'s
    sub-commands; each sub-command's namespace carries `run(args) -> exit status`."""
    parser = argparse.ArgumentParser(prog="persample", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods", help="list registered methods and whether they run here").set_defaults(run=_methods)
    commands.add_parser("workloads", help="list the model zoo").set_defaults(run=_workloads)
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` names (None: this process's own command line); returns its exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "pytest_args"):  # options for pytest may come first (`-q`, `--method x`)
        args.pytest_args = [*extra, *args.pytest_args]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.from_command_line = argv is None  # sys.argv is this command's own (a command may restart itself)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
