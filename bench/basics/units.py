"""Byte sizes as people write them (`2GiB`, `512MB`) and as the tool prints them, and thresholds
as percentages."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_bytes(text: str) -> int:
    """`2GiB` -> 2147483648. Raises ValueError with the accepted forms."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write it like 2GiB, 512MiB, 8GB or 1048576")
    exact = float(match.group(1)) * _UNITS[unit]
    if exact != int(exact):
        raise ValueError(f"{text!r} is not a whole number of bytes; write it like 2GiB")
    if exact <= 0:
        raise ValueError(f"{text!r} must be more than 0 bytes")
    return int(exact)


def format_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None (not measured) -> 'n/a'."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_percent(fraction: float) -> str:
    """0.05 -> '5%', 0.005 -> '0.5%': a threshold as it was given, never rounded to 0%."""
    return f"{fraction * 100:.4g}%"
