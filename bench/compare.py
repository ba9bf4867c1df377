"""Gate a change on speed AND memory: compare two runs cell by cell, exit 1 on a regression.

    python -m bench.compare runs/base runs/new --max-slowdown 5% --max-memory-growth 5%

BASE and NEW are run directories (results.jsonl + env.json) or pytest-benchmark JSON files.
A change is a regression only when it is past the threshold AND larger than the measured spread
(IQR) of either side: noise is not a regression. So is a cell that trained in the base and fails
in the candidate, a figure that is not a number, and a cell the candidate lost (unless
--allow-missing). With --max-energy-growth, joules per 1,000 examples gate too, where both sides
measured them. Runs from different GPUs, torch versions, data, memory caps, memory settings
(the allocator's and cuBLAS's environment variables) or model architectures (two versions of a
model under one name) are refused unless --force.
Exit status: 0 passed, 1 a regression, 2 bad input or refused.
"""

from __future__ import annotations

from pathlib import Path

from bench.basics.schema import NewerSchemaError
from bench.basics.units import format_percent
from bench.cli import percentage
from bench.gates.comparison import (
    busy_notes,
    compare,
    load_side,
    method_notes,
    refusal,
    table_lines,
)
from bench.records import store
from lenet.cli import OneLineParser, UsageError, exit_with, fail

PROG = "python -m bench.compare"


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the run (or pytest-benchmark JSON) to beat")
    parser.add_argument("new", type=Path, help="the candidate")
    parser.add_argument("--max-slowdown", type=percentage, default=0.05, metavar="PCT")
    parser.add_argument("--max-memory-growth", type=percentage, default=0.05, metavar="PCT")
    parser.add_argument("--max-energy-growth", type=percentage, metavar="PCT",
                        help="also gate joules per 1,000 examples where both runs measured "
                             "them (GPU rows; off unless given)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="pass when the candidate lacks cells the base measured")
    parser.add_argument("--force", action="store_true",
                        help="compare runs from different GPUs, torch versions, data, caps, "
                             "memory settings or model architectures")
    args = parser.parse_args(argv)
    try:
        base, new = load_side(args.base), load_side(args.new)
    except (UsageError, NewerSchemaError, store.RunDirError) as exc:
        fail(PROG, str(exc))
    reason = refusal(base, new)
    if reason and not args.force:
        fail(PROG, f"{reason}; their figures are not comparable (pass --force to compare "
                   f"anyway)")
    changes, only_base, only_new = compare(base, new, args.max_slowdown, args.max_memory_growth,
                                           args.max_energy_growth)
    print("\n".join(table_lines(changes)))
    for key in only_new:
        print(f"only in {new.name}: {key}")
    failing = [c for c in changes if c.failures]
    for c in failing:
        for failure in c.failures:
            print(f"REGRESSION {c.key}: {failure}")
    for line in busy_notes(changes, base.name, new.name) + method_notes(changes, base.name,
                                                                         new.name):
        print(line)
    lost = [] if args.allow_missing else only_base
    for key in only_base:
        if args.allow_missing:
            print(f"only in {base.name}: {key}")
        else:
            print(f"REGRESSION {key}: measured in {base.name}, missing from {new.name} (pass "
                  f"--allow-missing to allow it)")
    if not changes:
        fail(PROG, "the two runs share no cell; nothing was compared")
    if failing or lost:
        print(f"{len(failing)} of {len(changes)} cells regressed"
              f"{f', {len(lost)} missing' if lost else ''}")
        return 1
    energy = "" if args.max_energy_growth is None else \
        f" and {format_percent(args.max_energy_growth)} energy"
    print(f"passed: {len(changes)} cells within {format_percent(args.max_slowdown)} speed and "
          f"{format_percent(args.max_memory_growth)} memory{energy}")
    return 0


if __name__ == "__main__":
    exit_with(main)
