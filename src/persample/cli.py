"""`persample run | conformance | check | bench | collect | report | methods | workloads`."""
from __future__ import annotations

import argparse
import importlib
import sys


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


# Each area adds its own sub-commands: `add_commands(subparsers)` in these modules.
COMMAND_MODULES = ("persample.bench.commands", "persample.report.commands", "persample.runner", "persample.modelcheck.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persample", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods", help="list registered methods and whether they run here").set_defaults(run=_methods)
    commands.add_parser("workloads", help="list the model zoo").set_defaults(run=_workloads)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
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
