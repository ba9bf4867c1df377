"""The one check of a figure that grew past its bound: `bench.compare`'s memory and energy and
the pytest plugin's memory gate. Without torch or pandas: the plugin imports it in any project's
pytest."""

from __future__ import annotations

from collections.abc import Callable

from bench.basics.units import format_percent


def growth_past(name: str, before: float, after: float, allowed: float,
                formatted: Callable[[float], str]) -> str | None:
    """The line that says `name` grew past `allowed` (a fraction of `before`), or None where it
    held. Callers check first that both figures are numbers and `before` is above 0."""
    if after - before <= allowed * before:
        return None
    return (f"{name} grew from {formatted(before)} to {formatted(after)} "
            f"({after / before - 1:+.1%}), past the {format_percent(allowed)} allowed")
