"""Where `python -m bench.run --grid default` spends its time, phase by phase, over a few runs.

    python tests/benchmarks/grid_phases.py [--runs 3] [--tree PATH] [-- MORE bench.run OPTIONS]
    python tests/benchmarks/grid_phases.py --run-dir runs/20261201-101500   # a finished run

Each run starts cold, as a user's does (a fresh inductor cache, its own run directory), from the
source tree given (this one by default: another checkout gives a before-and-after), and is timed
from outside. Prints each run's phases (bench.records.phases, from its rows and searches) and
wall-clock time, then the median of each over the runs. Phases an older tree's rows do not record
are left out. Not a test: figures to read.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.records import store  # noqa: E402
from bench.records.phases import phase_lines, phases  # noqa: E402


def run_phases(run_dir: Path) -> dict[str, float]:
    rows, _ = store.read_run(run_dir)
    boundaries, _ = store.read_run_boundaries(run_dir)
    return phases(rows, boundaries)


def timed_run(tree: Path, scratch: Path, more: list[str]) -> tuple[dict[str, float], float]:
    """One cold run of the default grid from `tree`: its phases and its wall-clock seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree),
           "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor")}  # compiles from nothing
    out = scratch / "run"
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bench.run", "--grid", "default", "--out",
                             str(out), *more], cwd=tree, env=env, capture_output=True,
                            text=True)
    wall_s = time.monotonic() - began
    if result.returncode != 0:
        sys.exit(f"bench.run failed ({result.returncode}): {result.stderr[-2000:]}")
    return run_phases(out), wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to run")
    parser.add_argument("--run-dir", type=Path, help="tabulate this finished run and stop")
    parser.add_argument("more", nargs="*", help="more bench.run options, after --")
    args = parser.parse_args()
    if args.run_dir is not None:
        print("\n".join(phase_lines(run_phases(args.run_dir))))
        return
    runs = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as scratch:
            spent, wall_s = timed_run(args.tree.resolve(), Path(scratch), args.more)
        runs.append((spent, wall_s))
        print(f"run {n + 1} of {args.runs}: {wall_s:.1f} s wall clock")
        print("\n".join(phase_lines(spent, wall_s=wall_s)), flush=True)
    names = list(dict.fromkeys(name for spent, _ in runs for name in spent))
    medians = {name: statistics.median(spent.get(name, 0.0) for spent, _ in runs)
               for name in names}
    walls = sorted(wall_s for _, wall_s in runs)
    print(f"median of {args.runs} runs: {statistics.median(walls):.1f} s wall clock "
          f"(each: {', '.join(f'{w:.1f}' for w in walls)} s)")
    print("\n".join(phase_lines(medians, wall_s=statistics.median(walls))))


if __name__ == "__main__":
    main()
