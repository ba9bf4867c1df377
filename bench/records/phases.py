"""Where a run's time went: starting workers, loading data, compiling ahead, warm-up and
compiling, sizing and timing the repeats, the rest of each cell, and the boundary searches, from
the figures its rows and searches hold. The command adds what only it sees (its own start,
planning, the report).

A figure an older run did not record leaves its phase out: a missing figure is never a zero.
"""

from __future__ import annotations

STARTING = "starting workers (interpreter, torch, first step)"
DATA = "loading data"
AHEAD = "compiling ahead (processes side by side, before the cells)"
SETUP = "building, warm-up, compiling"
SIZING = "sizing the repeats"
TIMED = "timed repeats"
REST = "rest of the cells (probes, memory tracking, OOM attempts)"
SEARCHES = "boundary searches"


def _total(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def phases(rows: list[dict], boundaries: list[dict]) -> dict[str, float]:
    """Seconds per phase, summed over the cells and searches that recorded it."""
    starts = [(r.get("worker_start_s"), r.get("data_load_s")) for r in rows]
    timed = [sum(r["repeat_s"]) if r.get("repeat_s") else None for r in rows]
    rest = [r["wall_s"] - (r.get("setup_s") or 0) - r["sizing_s"] - (t or 0)
            for r, t in zip(rows, timed)
            if r.get("wall_s") is not None and r.get("sizing_s") is not None]
    figures = {
        STARTING: _total(start - (data or 0) for start, data in starts if start is not None),
        DATA: _total(data for _, data in starts),
        AHEAD: _total(r.get("compile_ahead_s") for r in rows),
        SETUP: _total(r.get("setup_s") for r in rows),
        SIZING: _total(r.get("sizing_s") for r in rows),
        TIMED: _total(timed),
        REST: _total(rest),
        SEARCHES: _total(b.get("search_s") for b in boundaries),
    }
    return {name: seconds for name, seconds in figures.items() if seconds is not None}


def phase_lines(measured: dict[str, float], more: dict[str, float] | None = None,
                wall_s: float | None = None) -> list[str]:
    """The phases as lines of text, each with its seconds and its share of their total, beside
    the command's wall-clock time where it is known (several workers' phases overlap in it).
    `more`: what only the command sees, or its own wall-clock time of a phase the rows sum over
    processes side by side, which then stands in that phase's place."""
    every = {**measured, **(more or {})}
    total = sum(every.values())
    took = "" if wall_s is None else f"; the command took {wall_s:.1f} s"
    lines = [f"where the time went ({total:.1f} s in all{took}):"]
    for name, seconds in every.items():
        share = seconds / total if total else 0.0
        lines.append(f"  {name:<58}{seconds:>8.1f} s{share:>6.0%}")
    return lines
