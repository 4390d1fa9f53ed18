"""Numbers as the report prints them: times, bytes, ratios and percentages."""
from __future__ import annotations

DASH = "—"


def seconds_text(seconds: float | None) -> str:
    """0.00123 -> '1.23 ms'."""
    if seconds is None:
        return DASH
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def bytes_text(size: float | None) -> str:
    """123456789 -> '118 MiB'."""
    if size is None:
        return DASH
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def ratio_text(ratio: float | None) -> str:
    """12.345 -> '12.3×'."""
    return DASH if ratio is None else f"{ratio:.3g}×"


def percent_text(fraction: float | None) -> str:
    """0.4567 -> '45.7%'."""
    return DASH if fraction is None else f"{100 * fraction:.3g}%"


def error_text(value: float | None) -> str:
    """A measured error in scientific notation."""
    return DASH if value is None else f"{value:.2e}"


FILTERS = {
    "seconds": seconds_text,
    "bytes": bytes_text,
    "ratio": ratio_text,
    "percent": percent_text,
    "error": error_text,
}
