"""How each method looks in the plots: a colour and a marker, never both shared with another method.

Colours come from Paul Tol's "muted" palette (nine colours told apart with the common forms of
colour blindness, and in grey print); with more methods than colours a colour repeats, so every
method also has its own marker. Line dashes mean something else: how the method's run stands
(`line_dash`). Black, grey and red are kept for the reference lines and for failed runs.
"""
from __future__ import annotations

from dataclasses import dataclass

# Paul Tol, "Colour schemes", muted qualitative scheme (https://personal.sron.nl/~pault/).
TOL_MUTED = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")
# Filled plotly symbols that stay distinct at 8 px; "x" (failures), "line-ew" and "triangle-down"
# (the reference lines) are not among them.
MARKERS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star", "cross",
           "triangle-left", "triangle-right", "hexagram", "bowtie", "hourglass", "star-diamond")


@dataclass(frozen=True)
class Style:
    """A method's colour and marker (plotly names)."""

    color: str
    marker: str


@dataclass(frozen=True)
class Reference:
    """A reference drawn beside the methods: its legend name, colour, dash and marker."""

    name: str
    color: str
    dash: str
    marker: str


BASELINE = Reference("non-private backward", "#000000", "dash", "line-ew-open")
FLOOR = Reference("warm floor (writing into memory already touched)", "#777777", "dot", "triangle-down-open")
FRESH_FLOOR = Reference("fresh-output floor (allocating and writing the per-sample gradients)", "#777777", "dash",
                        "triangle-up-open")
FAILED_COLOR = "#d62728"


def method_styles(methods: list[str]) -> dict[str, Style]:
    """One style per method, in the given order: the n-th method gets the n-th colour and the n-th
    marker (cycling), so no two methods share both for the first 126 (lcm of 9 and 14)."""
    return {name: Style(TOL_MUTED[i % len(TOL_MUTED)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(methods)}


def line_dash(conformant: bool, captured: bool) -> str:
    """Solid: eager and conformant; dash-dot: replayed from a CUDA graph; dotted: the method fails
    conformance there, or was not checked (its markers are then hollow too)."""
    if not conformant:
        return "dot"
    return "dashdot" if captured else "solid"


def marker_symbol(style: Style, conformant: bool) -> str:
    """The method's marker, hollow where it is not conformant."""
    return style.marker if conformant else f"{style.marker}-open"
