"""The report's capability table shows every restriction each registered method declares: one
expectation per field of `Capabilities`, checked on the rendered table, so a field added to
`Capabilities` without a column (and an expectation here) fails."""
import dataclasses
import html
import re

import pytest

from persample.capabilities import Capabilities
from persample.contract import COUPLING
from persample.methods.registry import registered
from persample.report.build import render
from persample.report.capabilities import capability_rows

DESCRIPTIVE = {"name", "summary", "notes"}
"""Fields that describe a method and restrict nothing."""


def _dtype(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# field -> what the table must show for it: [(column, text that column contains)]
SHOWN = {
    "framework": lambda caps: [("framework", caps.framework)],
    "devices": lambda caps: [("devices", device) for device in caps.devices],
    "device_reasons": lambda caps: [("devices", f"not {d}: {why}") for d, why in caps.device_reasons.items()],
    "dtypes": lambda caps: [("dtypes", _dtype(dtype)) for dtype in caps.dtypes],
    "dtype_reasons": lambda caps: [("dtypes", f"not {_dtype(d)}: {why}") for d, why in caps.dtype_reasons.items()],
    "layers": lambda caps: [("layers", "any differentiable module")] if caps.layers is None
    else [("layers", layer.__name__) for layer in caps.layers],
    "requires": lambda caps: [("requires", package) for _, package in caps.requires],
    "relies_on": lambda caps: [("relies_on", assumption) for assumption in caps.relies_on],
    "refusals": lambda caps: [("refuses", f"{r.summary} ({r.assumption})") for r in (COUPLING, *caps.refusals)],
    "peer": lambda caps: [("kind", "peer" if caps.peer else "ours")],
    "reference": lambda caps: [("kind", "the reference")] if caps.reference else [],
    "chooser": lambda caps: [("kind", "chooses per model")] if caps.chooser else [],
}
CHECKS_ITSELF = lambda caps: [("checks_itself", "yes:" if caps.checks_itself else "no:")]  # noqa: E731  (a property)


def rendered_table() -> dict[str, dict[str, str]]:
    """{method: {column: the cell's text}} of the table as the page renders it."""
    page = render("capabilities.html", capabilities=capability_rows())
    table = {}
    for method, cells in re.findall(r'<tr data-method="([^"]+)">(.*?)</tr>', page, re.S):
        table[html.unescape(method)] = {
            column: html.unescape(re.sub(r"<br>", "; ", re.sub(r"<(?!br>)[^>]+>", "", text))).strip()
            for column, text in re.findall(r'<td data-column="(\w+)"[^>]*>(.*?)</td>', cells, re.S)
        }
    return table


def test_every_field_of_capabilities_is_descriptive_or_shown_in_the_table():
    fields = {field.name for field in dataclasses.fields(Capabilities)}
    unshown = fields - DESCRIPTIVE - set(SHOWN)
    assert not unshown, (f"Capabilities fields {sorted(unshown)} restrict a method but the capability table "
                         "does not show them: add a column (report/capabilities.py) and an expectation here")
    assert set(SHOWN) <= fields, f"expectations for fields Capabilities no longer has: {sorted(set(SHOWN) - fields)}"


def test_the_table_has_one_row_per_registered_method_in_registration_order():
    assert list(rendered_table()) == list(registered())


@pytest.mark.parametrize("name", list(registered()))
def test_every_restriction_of_a_method_appears_in_its_row(name):
    caps = registered()[name].capabilities
    row = rendered_table()[name]
    missing = [(field, column, text)
               for field, expected in [*SHOWN.items(), ("checks_itself", CHECKS_ITSELF)]
               for column, text in expected(caps)
               if text not in row.get(column, "")]
    assert not missing, f"{name}: restrictions missing from the capability table: {missing}"


def test_the_checks_itself_column_says_no_for_a_peer_and_yes_for_our_checked_methods():
    table = rendered_table()
    assert table["torch-ew"]["checks_itself"].startswith("no:")
    assert table["hooks"]["checks_itself"].startswith("yes:")
    assert table["loop"]["checks_itself"] == "yes: it is the reference"


def test_a_refusal_implied_by_the_layer_vocabulary_is_listed_with_the_declared_ones():
    """torch-ew differentiates a fixed list of layer types (hooks, expand and kernel take any layer:
    the torch.func fallback computes those without a rule)."""
    assert registered()["hooks"].capabilities.layers is None
    row = rendered_table()["torch-ew"]["refuses"]
    caps = registered()["torch-ew"].capabilities
    implied = caps.all_refusals()[-1]
    assert implied.summary.startswith("trainable layers outside") and f"{implied.summary} ({implied.assumption})" in row
