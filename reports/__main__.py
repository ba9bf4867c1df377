"""Write a run's report: RUN_DIR/report/index.html, its PNGs and cells.csv.

    python -m reports RUN_DIR
    python -m reports BASE_DIR NEW_DIR     # NEW_DIR/compare/index.html, worst changes first
    python -m reports RUN_DIR --out DIR    # the report elsewhere (a read-only run directory)
    python -m reports RUN_DIR --history DB # with each cell's recent trend from bench.history
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from lenet.cli import OneLineParser, UsageError, exit_with, fail

PROG = "python -m reports"


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="one run, or BASE NEW to compare")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the report here (default: RUN_DIR/report, NEW/compare)")
    parser.add_argument("--history", metavar="DB",
                        help="a bench.history store: the page shows each cell's recent trend")
    args = parser.parse_args(argv)
    if len(args.runs) > 2:
        fail(PROG, "give one run directory, or two (BASE NEW) to compare")
    base, new = (args.runs[0], args.runs[1]) if len(args.runs) == 2 else (None, args.runs[0])
    try:
        # imported here: pandas and matplotlib take seconds, and Ctrl-C during them is answered
        # below, without a traceback
        from reports.write import write_report

        index = write_report(new, base, args.out, args.history)
    except UsageError as exc:  # reports.frame.NotARun among them
        fail(PROG, str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: the report is not written; the results are untouched",
              file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as exc:
        where = exc.filename or args.out or new
        fail(PROG, f"cannot write the report into {where}: {exc.strerror or exc}; "
                   f"write it elsewhere with --out DIR")
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    exit_with(main)
