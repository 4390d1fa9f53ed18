"""Known deviations of peer methods: where each is wrong, why, and on which models.

One TOML file of `[[deviation]]` tables (`persample/conformance/known_deviations.toml` ships with
the package; a maintainer may add files of their own). Each entry names the method, the
conformance checks it fails (`checks`: "matrix" for the comparison with the float64 reference,
or invariant names; fnmatch patterns), where (`workloads`, `modes`, `devices`: lists or "*"), the
`reason`, and `applies_when`: the model features that trigger it, so that `auto` never picks a
method whose recorded deviation applies to the model at hand (or `seen_on_example_batch = true`
where no layer feature marks it, as with a layer called time-major: `auto` then relies on its
check of a peer's answer on the example batch). A feature is a layer type, or a layer attribute
compared with a literal (`Module` matches every module); an entry applies when any is present:

    applies_when = ["Embedding.padding_idx is not None", "_ConvNd.padding_mode != 'zeros'"]

A layer type matches its subclasses (the names of every class in the layer's MRO are tried).
"""
from __future__ import annotations

import ast
import fnmatch
import operator
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn

PACKAGED = Path(__file__).parent / "conformance" / "known_deviations.toml"
FEATURE = re.compile(r"^\s*(\w+)(?:\.(\w+)(?:\s+(is not|is|not in|in)\s+|\s*(==|!=|<=|>=|<|>)\s*)(.+?))?\s*$")
OPERATORS = {
    "is": operator.is_, "is not": operator.is_not, "==": operator.eq, "!=": operator.ne,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
    "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
}


@dataclass(frozen=True)
class Feature:
    """`Layer` (present) or `Layer.attribute <op> literal` (present with that value)."""

    layer: str
    attribute: str | None = None
    op: str | None = None
    value: object = None

    @classmethod
    def parse(cls, text: str) -> Feature:
        """The feature written as 'Layer' or 'Layer.attribute <op> literal' in known_deviations.toml. Raises
        `ValueError` for another form or a value that is not a Python literal.
        """
        found = FEATURE.match(text)
        if not found:
            raise ValueError(f"cannot read the model feature {text!r}; write 'Layer' or 'Layer.attribute <op> literal'")
        layer, attribute, word_op, symbol_op, literal = found.groups()
        op = word_op or symbol_op
        if attribute is None:
            return cls(layer)
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"in {text!r}: {literal!r} is not a Python literal") from error
        return cls(layer, attribute, op, value)

    def present(self, model: nn.Module) -> bool:
        """Whether some module of `model` is a `layer` (by class name, subclasses included) whose attribute
        satisfies the comparison, when there is one.
        """
        for module in model.modules():
            if self.layer not in {cls.__name__ for cls in type(module).__mro__}:
                continue
            if self.attribute is None:
                return True
            if hasattr(module, self.attribute) and OPERATORS[self.op](getattr(module, self.attribute), self.value):
                return True
        return False


def _patterns(value) -> tuple[str, ...]:
    if value in (None, "*"):
        return ("*",)
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Deviation:
    """A known deviation of a peer from the definition (known_deviations.toml): which method, checks,
    workloads, modes and devices it covers, the layer features that trigger it, its reason and source.
    """

    method: str
    reason: str
    checks: tuple[str, ...] = ("matrix",)
    workloads: tuple[str, ...] = ("*",)
    modes: tuple[str, ...] = ("*",)
    devices: tuple[str, ...] = ("*",)
    applies_when: tuple[Feature, ...] = ()
    seen_on_example_batch: bool = False
    """No layer feature marks it (it is in how the model uses its layers): `auto` avoids it because
    a peer's answer is held against autograd on the example batch (`checks.verify_answer`)."""
    source: str = ""

    def covers(self, method: str, check: str, workload: str, mode: str, device: str) -> bool:
        """Whether this entry expects `method` to fail `check` on that workload, mode and device."""
        return method == self.method and all(
            any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)
            for value, patterns in ((check, self.checks), (workload, self.workloads), (mode, self.modes), (device, self.devices))
        )

    def in_scope(self, method: str, device: str) -> bool:
        """Whether this entry is about `method` on a device matching its `devices` patterns."""
        return method == self.method and any(fnmatch.fnmatchcase(device, p) for p in self.devices)

    def applies_to(self, model: nn.Module) -> bool:
        """Whether the model has a feature that triggers this deviation. Modes are not consulted: a
        deviation that a mode's tolerance hides (or that shows in some dtypes only) is still a
        reason not to pick the method."""
        return any(feature.present(model) for feature in self.applies_when)

    def describe(self) -> str:
        """'<method>: <reason>'."""
        return f"{self.method}: {self.reason}"


def load_deviations(path: Path) -> list[Deviation]:
    """The entries of one deviations file; a malformed entry is a `ValueError` naming it."""
    table = tomllib.loads(Path(path).read_text())
    entries = table.get("deviation", [])
    unknown = set(table) - {"deviation"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; write each entry as [[deviation]]")
    found = []
    for index, entry in enumerate(entries):
        missing = {"method", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: deviation #{index + 1} lacks {sorted(missing)}")
        if not entry.get("applies_when") and not entry.get("seen_on_example_batch"):
            raise ValueError(f"{path}: deviation #{index + 1} needs applies_when (the model features that trigger "
                             "it) or seen_on_example_batch = true (what auto's check on the example batch catches)")
        found.append(Deviation(
            method=entry["method"], reason=entry["reason"], checks=_patterns(entry.get("checks", "matrix")),
            workloads=_patterns(entry.get("workloads")), modes=_patterns(entry.get("modes")),
            devices=_patterns(entry.get("devices")),
            applies_when=tuple(Feature.parse(text) for text in _patterns(entry.get("applies_when", []))),
            seen_on_example_batch=bool(entry.get("seen_on_example_batch", False)),
            source=f"{path}#{index + 1}",
        ))
    return found


@lru_cache(maxsize=1)
def packaged_deviations() -> tuple[Deviation, ...]:
    return tuple(load_deviations(PACKAGED)) if PACKAGED.is_file() else ()


def deviations_applying(method: str, model: nn.Module) -> list[Deviation]:
    """The packaged deviations of `method` whose model features `model` has."""
    return [d for d in packaged_deviations() if d.method == method and d.applies_to(model)]
