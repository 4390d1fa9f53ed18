"""Score a method on the peers' layer configurations (`peer_configs.CONFIGS`) against the float64 loop.

For each configuration, `per_sample_grads(..., method=method)` runs in float32 on a fresh build and
is measured against the float64 per-sample loop (`reference.reference_grads`, one per
configuration, cached) with `reference.compare`, under float32's reference tolerance
(`modes.tolerance_for(torch.float32)`). Each outcome is one of:

- "right": within the tolerance;
- "refused": `persample.Unsupported` (the first line of its message kept, and a grouping key with
  the layer's name taken out, `reason`);
- "wrong": an answer outside the tolerance, or one `compare` cannot measure (a missing parameter,
  a wrong shape, NaN), with the error measure (`relative`, `per_sample`, `detail`);
- "error": any other exception (its type and first line).

    >>> from persample.conformance.peer_configs import by_id
    >>> [o.verdict for o in score("loop", [by_id("opacus/linear/in4x10-bias1")])]
    ['right']
"""
from __future__ import annotations

import re
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from ..api import per_sample_grads
from ..errors import Unsupported
from ..modes import tolerance_for
from ..reference import compare, reference_grads
from .peer_configs import CONFIGS, PeerConfig

VERDICTS = ("right", "refused", "wrong", "error")
TOLERANCE = tolerance_for(torch.float32)
"""The float32 reference tolerance every outcome is judged by."""


@dataclass
class Outcome:
    """One method on one configuration: `verdict` (one of `VERDICTS`); `detail`: the comparison's
    description (right, wrong), the refusal's or exception's first line; `reason`: a refusal's (or
    error's) grouping key; `relative`, `per_sample`: the largest errors `compare` measured (None
    when nothing was measured); `seconds`: the method's wall time (the reference not included)."""

    config: str
    source: str
    family: str
    method: str
    verdict: str
    detail: str = ""
    reason: str = ""
    relative: float | None = None
    per_sample: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The outcome as a JSON-ready dict."""
        return asdict(self)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def reason_key(message: str) -> str:
    """A refusal's message without what names the one model (the method's prefix, the layer's
    qualified name and type, a parameter's name and list, numbers and shapes), cut before the fix
    and the list of registered rules, so that refusals of the same kind group together."""
    text = re.sub(r"^[\w-]+: ", "", message)
    text = re.split(r"; rules exist for |\. Fix: | \(methods that can: ", text)[0]
    text = re.sub(r"\blayer [\w.]+ \(\w+\)", "layer <L>", text)
    text = re.sub(r"\bparameter [\w.]+", "parameter <p>", text)
    text = re.sub(r"\(('[\w.]+'(, )?)+\)", "(...)", text)
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?(e-?\d+)?(?![\w.])", "N", text)
    return re.sub(r"\((N, )*N,?\)", "(...)", text)


_REFERENCES: dict[str, dict[str, torch.Tensor]] = {}


def reference_for(config: PeerConfig) -> dict[str, torch.Tensor]:
    """The float64 per-sample loop's gradients for `config` (computed once per configuration)."""
    if config.id not in _REFERENCES:
        model, inputs, targets = config.build()
        _REFERENCES[config.id] = reference_grads(model, inputs, targets, config.loss_fn)
    return _REFERENCES[config.id]


def score_one(method: str, config: PeerConfig) -> Outcome:
    """`method` on `config` in float32, judged against the float64 loop."""
    outcome = Outcome(config.id, config.source, config.family, method, "error")
    model, inputs, targets = config.build()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grads = per_sample_grads(model, inputs, targets, loss_fn=config.loss_fn, method=method)
    except Unsupported as error:
        outcome.verdict, outcome.detail = "refused", first_line(error)
        outcome.reason = reason_key(outcome.detail)
        return outcome
    except Exception as error:  # noqa: BLE001 - a raw failure is an outcome to record
        outcome.detail = f"{type(error).__name__}: {first_line(error)}"
        outcome.reason = outcome.detail
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - start
    comparison = compare(grads, reference_for(config))
    outcome.relative = comparison.max_relative if comparison.relative else None
    outcome.per_sample = comparison.max_per_sample if comparison.per_sample else None
    outcome.verdict = "right" if comparison.within(TOLERANCE) else "wrong"
    outcome.detail = comparison.describe(TOLERANCE)
    return outcome


def score(method: str, configs: Iterable[PeerConfig] = CONFIGS) -> list[Outcome]:
    """`method` on every configuration of `configs` (default: all of `CONFIGS`), in order."""
    return [score_one(method, config) for config in configs]


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """How many outcomes have each verdict, every verdict of `VERDICTS` present."""
    tally = Counter(o.verdict for o in outcomes)
    return {verdict: tally.get(verdict, 0) for verdict in VERDICTS}


def right_fraction(outcomes: Sequence[Outcome]) -> float:
    """The share of outcomes that are right (1.0 for none)."""
    return counts(outcomes)["right"] / len(outcomes) if outcomes else 1.0


def grouped_reasons(outcomes: Sequence[Outcome], verdict: str = "refused") -> list[tuple[str, int, list[str]]]:
    """(reason, count, families) of the outcomes with `verdict`, the most frequent first."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.verdict == verdict:
            groups.setdefault(outcome.reason, []).append(outcome)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(reason, len(items), sorted({o.family for o in items})) for reason, items in ranked]


def summary_table(results: dict[str, Sequence[Outcome]]) -> str:
    """A Markdown table: per method, the count and share of each verdict."""
    lines = ["| method | " + " | ".join(VERDICTS) + " | configs |", "|---" * (len(VERDICTS) + 2) + "|"]
    for method, outcomes in results.items():
        tally = counts(outcomes)
        total = max(len(outcomes), 1)
        cells = [f"{tally[v]} ({100 * tally[v] / total:.0f}%)" for v in VERDICTS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(outcomes)} |")
    return "\n".join(lines)


def family_table(results: dict[str, Sequence[Outcome]]) -> str:
    """A Markdown table: per layer family, each method's right/total."""
    methods = list(results)
    families: dict[str, None] = {}
    for outcomes in results.values():
        families.update(dict.fromkeys(o.family for o in outcomes))
    lines = ["| family | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for family in families:
        cells = []
        for method in methods:
            mine = [o for o in results[method] if o.family == family]
            tally = counts(mine)
            cell = f"{tally['right']}/{len(mine)}"
            if tally["wrong"] or tally["error"]:
                cell += f" (**{tally['wrong']} wrong, {tally['error']} error**)"
            cells.append(cell)
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "TOLERANCE",
    "VERDICTS",
    "Outcome",
    "counts",
    "family_table",
    "first_line",
    "grouped_reasons",
    "reason_key",
    "reference_for",
    "right_fraction",
    "score",
    "score_one",
    "summary_table",
]
