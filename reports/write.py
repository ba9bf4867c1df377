"""A run's report on disk: index.html, its PNGs and cells.csv, in RUN_DIR/report (or, for a
comparison, NEW_DIR/compare). `python -m reports` is its command line."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.gates.comparison import compare, load_side
from reports import html, plots
from reports.frame import load_run

# Why a plot is absent, when the run has nothing for it to draw.
NOT_DRAWN = {
    "throughput.png": "no cell trained",
    "memory.png": "no float32 NCHW cell trained",
    "memory_parts.png": "needs the allocator's figures, which only a GPU run has",
    "tradeoff.png": "no trained cell has a memory figure",
    "energy.png": "no cell has an energy figure (the energy notes in the table say why)",
    "roofline.png": "no trained cell has FLOPs and a step's traffic (a model that could not be "
                    "counted, or a run from before they were)",
}
ALT_TEXT = {
    "throughput.png": "examples per second against batch size, per dtype, layout and loader",
    "memory.png": "peak memory against batch size with capacity and OOM boundary",
    "memory_parts.png": "the memory parts of one cell, stacked",
    "tradeoff.png": "examples per second against memory needed, best trade-offs joined",
    "energy.png": "examples per second against joules per 1,000 examples, per mode",
    "roofline.png": "achieved TFLOP/s against FLOPs per byte, per mode, under the card's roofs",
}


def write_report(run_dir: Path, base_dir: Path | None = None, out: Path | None = None,
                 history: str | None = None) -> Path:
    run = load_run(run_dir)
    folder = out or run_dir / ("compare" if base_dir else "report")
    folder.mkdir(parents=True, exist_ok=True)
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    images, missing = [], []
    for name, draw in plots.ALL.items():
        (folder / name).unlink(missing_ok=True)  # never show a plot left from an older report
        if draw(run, folder):
            images.append((name, ALT_TEXT[name]))
        else:
            missing.append(f"{name} not drawn: {NOT_DRAWN[name]}")
    comparison = None
    if base_dir is not None:
        changes, only_base, only_new = compare(load_side(base_dir), load_side(run_dir),
                                               0.05, 0.05)
        comparison = html.comparison_table(changes, only_base, only_new)
    run.cells.drop(columns=["attempts", "repeat_s"], errors="ignore").to_csv(
        folder / "cells.csv", index=False)
    index = folder / "index.html"
    trend = None
    if history is not None:
        from reports.history import trend_section  # the store's drivers: only where asked

        trend = trend_section(run_dir, history)
    index.write_text(html.page(run, images, missing, comparison,
                               str(base_dir) if base_dir else None, trend),
                     encoding="utf-8")
    return index
