"""The conformance suite's command-line options, each defined once, and their two spellings.

The opt-in plugin (`pytest -p persample.conformance.plugin`) spells them `--persample-<name>`, so
they cannot collide with another project's options. This repository's `conformance/` also accepts
the short spelling (`--method`); `persample conformance` accepts both and passes the long one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..modes import MODES

if TYPE_CHECKING:  # the CLI reads the spellings without importing pytest
    import pytest

PREFIX = "persample-"


@dataclass(frozen=True)
class Option:
    """One command-line option of the conformance suite, spelt `--persample-<name>` as a plugin and `--<name>`
    in this repository.
    """

    name: str
    help: str
    metavar: str
    repeatable: bool = False

    @property
    def long(self) -> str:
        """The plugin's spelling, e.g. `--persample-method`."""
        return f"--{PREFIX}{self.name}"

    @property
    def short(self) -> str:
        """This repository's spelling, e.g. `--method`."""
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        """The attribute `config.getoption` reads, e.g. `persample_method`."""
        return (PREFIX + self.name).replace("-", "_")


OPTIONS = (
    Option("method", "method to check (repeatable): a registered name, or module:object (or path/to/file.py:object) "
                     "to register your own; default: every registered method", "NAME|module:object", repeatable=True),
    Option("workload", "workload to check (repeatable); default: every workload", "NAME", repeatable=True),
    Option("mode", f"{'|'.join(MODES)}, or 'all' (repeatable); default: float32 and "
                   "one reduced-precision mode per family (the CI profile)", "MODE", repeatable=True),
    Option("device", "cpu or cuda (default: cuda when present)", "DEVICE"),
    Option("results", "where the results go: a file ending in .json, or a directory that gets <machine>.json "
                      "(default: reports/conformance/<machine>.json under pytest's rootdir)", "PATH"),
    Option("deviations", "a known-deviations TOML file of your own, used besides persample's (repeatable)", "FILE",
           repeatable=True),
)
BY_NAME = {option.name: option for option in OPTIONS}


def add_options(parser: pytest.Parser, short_names: bool = False) -> None:
    """Register every option as `--persample-<name>`, and also as `--<name>` when `short_names`."""
    group = parser.getgroup("persample conformance")
    for option in OPTIONS:
        names = (option.long, option.short) if short_names else (option.long,)
        group.addoption(*names, dest=option.dest, metavar=option.metavar, help=option.help,
                        action="append" if option.repeatable else "store", default=[] if option.repeatable else None)


def value(config: pytest.Config, name: str):
    """The option's value in this run: a list for a repeatable option, else a string or None."""
    return config.getoption(BY_NAME[name].dest)


def long_spelling(args: list[str]) -> list[str]:
    """`args` with each short spelling of an option replaced by the long one (`--mode all` and
    `--mode=all` become `--persample-mode all` and `--persample-mode=all`); other arguments unchanged."""
    spelled = []
    for arg in args:
        flag, equals, rest = arg.partition("=")
        option = next((o for o in OPTIONS if flag == o.short), None)
        spelled.append(option.long + equals + rest if option else arg)
    return spelled


def given(args: list[str], name: str) -> bool:
    """Whether `args` set the option `name`, in either spelling."""
    option = BY_NAME[name]
    return any(arg.partition("=")[0] in (option.short, option.long) for arg in args)
