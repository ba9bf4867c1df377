"""Write a run's report: RUN_DIR/report/index.html, its PNGs and cells.csv.

    python -m reports RUN_DIR
    python -m reports BASE_DIR NEW_DIR     # NEW_DIR/compare/index.html, worst changes first
    python -m reports RUN_DIR --out DIR    # the report elsewhere (a read-only run directory)
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.compare import compare, load_side
from lenet.cli import OneLineParser, UsageError, fail
from reports import html, plots
from reports.frame import NotARun, load_run

PROG = "python -m reports"
# Why a plot is absent, when the run has nothing for it to draw.
NOT_DRAWN = {
    "throughput.png": "no cell trained",
    "memory.png": "no float32 NCHW cell trained",
    "memory_parts.png": "needs the allocator's figures, which only a GPU run has",
    "tradeoff.png": "no trained cell has a memory figure",
}
ALT_TEXT = {
    "throughput.png": "examples per second against batch size, per dtype, layout and loader",
    "memory.png": "peak memory against batch size with capacity and OOM boundary",
    "memory_parts.png": "the memory parts of one cell, stacked",
    "tradeoff.png": "examples per second against memory needed, best trade-offs joined",
}


def write_report(run_dir: Path, base_dir: Path | None = None, out: Path | None = None) -> Path:
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
    index.write_text(html.page(run, images, missing, comparison,
                               str(base_dir) if base_dir else None),
                     encoding="utf-8")
    return index


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="one run, or BASE NEW to compare")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the report here (default: RUN_DIR/report, NEW/compare)")
    args = parser.parse_args(argv)
    if len(args.runs) > 2:
        fail(PROG, "give one run directory, or two (BASE NEW) to compare")
    base, new = (args.runs[0], args.runs[1]) if len(args.runs) == 2 else (None, args.runs[0])
    try:
        index = write_report(new, base, args.out)
    except (NotARun, UsageError) as exc:
        fail(PROG, str(exc))
    except OSError as exc:
        where = exc.filename or args.out or new
        fail(PROG, f"cannot write the report into {where}: {exc.strerror or exc}; "
                   f"write it elsewhere with --out DIR")
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
