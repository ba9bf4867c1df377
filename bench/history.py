"""Every run kept across commits: record runs, list the series, draw them, gate on the newest
points, and find the commit that made training slower or fatter.

    python -m bench.history add runs/20261202-101500 .benchmarks/*/0001_*.json
    python -m bench.history list
    python -m bench.history show --out history-report
    python -m bench.history check --min-step 3% --max-memory-growth 1%
    python -m bench.history bisect --series b256-float32-nchw-device
    python -m bench.history bisect --series b256-float32-nchw-device --memory

--db is the store: a SQLite file (default history.sqlite, or $LENET_BENCH_HISTORY) or a PostgreSQL
URL, postgresql://user:password@host/db, the store many runners share (pip install
'lenet-bench[postgresql]'). A series is one cell of one model on one machine class and card.
`check` exits 1 naming each series, figure, step and commit range that got worse among the newest
points (bench.series.trends), 0 where none did. `bisect` narrows a series' newest speed step to
one commit with bench.ab, in git worktrees of --repo; with --memory, its newest growth of peak
memory, with one run of the cell a commit (memory repeats to the byte). Exit status 2: bad input,
or a store that cannot be used (nothing is written half).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.basics.schema import NewerSchemaError
from bench.basics.units import parse_bytes
from bench.cli import percentage
from bench.records.store import RunDirError
from bench.series import bisection, points, trends
from bench.series.database import History, HistoryError
from bench.series.steps import NEWEST
from lenet.cli import OneLineParser, UsageError, exit_with, fail, positive_float, positive_int

PROG = "python -m bench.history"
DEFAULT_DB = "history.sqlite"


def memory_bound(text: str) -> tuple[float, int]:
    """`1%` -> (0.01, 0); `64KiB` -> (0.0, 65536): growth past either fails."""
    if text.strip().endswith("%"):
        return percentage(text), 0
    try:
        return 0.0, parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}; write a percentage (1%) or a size "
                                         f"(64KiB)") from None


def _parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, words: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=words, description=words)
        sub.error = parser.error  # one line, exit 2, as the top level
        sub.add_argument("--db", default=os.environ.get("LENET_BENCH_HISTORY", DEFAULT_DB),
                         help="a SQLite file or postgresql://user:password@host/db (default: "
                              "$LENET_BENCH_HISTORY, else history.sqlite)")
        return sub

    add = command("add", "record runs: run directories or pytest-benchmark JSON files")
    add.add_argument("paths", type=Path, nargs="+", metavar="RUN_DIR|BENCH.json")
    add.add_argument("--commit", help="the commit the runs measured (default: what each says)")
    add.add_argument("--branch", help="its branch (default: what each run says)")
    for name, words in (("list", "list the series"),
                        ("show", "an HTML page with a plot of each series"),
                        ("check", "exit 1 where the newest points got worse"),
                        ("bisect", "narrow a series' newest slowdown (or, with --memory, its "
                                   "growth of peak memory) to one commit")):
        sub = command(name, words)
        sub.add_argument("--series", default="", metavar="TEXT",
                         help="only the series whose name holds TEXT (cell, model, card or "
                              "machine)")
    commands.choices["show"].add_argument("--out", type=Path, default=Path("history-report"))
    check = commands.choices["check"]
    check.add_argument("--min-step", type=percentage, default=0.0, metavar="PCT",
                       help="ignore speed and energy steps smaller than this (default 0%%: any "
                            "step the noise does not explain)")
    check.add_argument("--max-memory-growth", type=memory_bound, default=(0.01, 0),
                       metavar="PCT|BYTES", help="peak memory growth that fails (default 1%%)")
    check.add_argument("--newest", type=positive_int, default=NEWEST, metavar="N",
                       help=f"how many of a series' newest points a regression may lie among "
                            f"(default {NEWEST}; a noisy machine sees a step later)")
    bisect = commands.choices["bisect"]
    bisect.add_argument("--repo", type=Path, default=Path("."),
                        help="the git repository holding the commits (default: here)")
    bisect.add_argument("--pairs", type=positive_int, default=4,
                        help="bench.ab's process pairs per gate (default 4)")
    bisect.add_argument("--rounds", type=positive_int, default=4,
                        help="bench.ab's rounds per pair (default 4)")
    bisect.add_argument("--timeout", type=positive_float, default=3600.0, metavar="SECONDS",
                        help="the most one gate may take (default 3600)")
    bisect.add_argument("--memory", action="store_true",
                        help="narrow the newest growth of peak memory instead, one run of the "
                             "cell a commit")
    bisect.add_argument("--max-memory-growth", type=memory_bound, default=(0.01, 0),
                        metavar="PCT|BYTES", help="with --memory: the growth that counts "
                                                  "(default 1%%)")
    return parser


def _selected(history: History, text: str) -> dict:
    found = {key: series for key, series in history.series().items()
             if text in trends.label(key)}
    if not found:
        raise UsageError(f"no series{f' matching {text!r}' if text else ''} in the store; "
                         f"record runs with: {PROG} add RUN_DIR")
    return found


def _add(history: History, args) -> int:
    for path in args.paths:
        recorded, new_points = points.read(path, args.commit, args.branch)
        word = history.add(recorded, new_points)
        commit = (recorded.commit_id or "no commit")[:12]
        print(f"{word}: {path} ({len(new_points)} points, {commit}, {recorded.card}, "
              f"{recorded.model})")
    return 0


def _list(history: History, args) -> int:
    for key, series in _selected(history, args.series).items():
        busy = sum(bool(p.point.busy) for p in series)
        newest = series[-1]
        speed = newest.point.examples_per_s
        print(f"{trends.label(key)}: {len(series)} points{f' ({busy} busy)' if busy else ''}, "
              f"{(series[0].run.commit_id or '?')[:12]}..{(newest.run.commit_id or '?')[:12]}"
              f", newest {f'{speed:,.0f} examples/s' if speed else newest.point.status}")
    return 0


def _check(history: History, args) -> int:
    selected = _selected(history, args.series)
    fraction, bytes_ = args.max_memory_growth
    found = [change for key, series in selected.items()
             for change in trends.regressions(key, series, args.min_step, fraction, bytes_,
                                              args.newest)]
    for change in found:
        print(f"REGRESSION {change.line()}")
    if found:
        print(f"{len(found)} regressions in {len({c.series for c in found})} of "
              f"{len(selected)} series")
        return 1
    print(f"passed: the newest points of {len(selected)} series hold")
    return 0


def _show(history: History, args) -> int:
    from reports.history import write_history  # pandas and matplotlib: only for the page

    page = write_history(_selected(history, args.series), args.out)
    print(f"wrote {page}")
    return 0


def _bisect(history: History, args) -> int:
    selected = _selected(history, args.series)
    if len(selected) > 1:
        raise UsageError(f"--series {args.series!r} matches {len(selected)} series; name one "
                         f"(see {PROG} list)")
    (key, series), = selected.items()
    settings = next((p.point.settings for p in reversed(series) if p.point.settings), None)
    if args.memory:
        fraction, bytes_ = args.max_memory_growth
        found = trends.memory_growth(key, series, fraction, bytes_, newest=len(series))
        if not found:
            raise UsageError(f"{trends.label(key)} shows no growth of peak memory past the "
                             f"bound to bisect")
        step, worse = found[-1], "fatter"
        gate = bisection.memory_gate(bisection.cell_options(settings),
                                     step.first_after.point.memory_field, fraction, bytes_,
                                     args.timeout)
    else:
        slower = [c for c in trends.steps(key, series, trends.SPEED)
                  if c.size is not None and c.size < 0]
        if not slower:
            raise UsageError(f"{trends.label(key)} shows no slowdown to bisect")
        step, worse = slower[-1], "slower"
        gate = bisection.ab_gate(bisection.ab_options(settings, -step.size / 2, args.pairs,
                                                      args.rounds), args.timeout)
    good, bad = step.last_before.run.commit_id, step.first_after.run.commit_id
    if not good or not bad:
        raise UsageError(f"the runs on either side of {step.line()} do not say their commits; "
                         f"record them again with: {PROG} add RUN_DIR --commit SHA")
    print(f"bisecting {step.line()}")
    result = bisection.bisect(args.repo, good, bad, gate, worse=worse)
    if result.culprit is None:
        print(f"not reproduced: {result.bad[:12]} is not {worse} than {result.good[:12]} on "
              f"this machine, so there is nothing to narrow")
        return 1
    print(f"first {worse} commit: {result.culprit}")
    return 0


COMMANDS = {"add": _add, "list": _list, "show": _show, "check": _check, "bisect": _bisect}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        with History(args.db) as history:
            return COMMANDS[args.command](history, args)
    except (HistoryError, UsageError, RunDirError, NewerSchemaError,
            bisection.BisectError) as exc:
        fail(PROG, str(exc))


if __name__ == "__main__":
    exit_with(main)
