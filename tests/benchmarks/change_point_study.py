"""How well bench.history finds a step, on series whose noise is this project's recorded spreads:
the detection rate of planted 3, 5 and 10% slowdowns within 3 points, and the false alarms per
100 series-points of a series with no step, for each PELT penalty factor.

    python tests/benchmarks/change_point_study.py [--series 300] [--penalties 6,8,10] [--newest 3]

Each series has 20 points before the step. A check runs as each point arrives, as CI would run
`bench.history check --newest N` after recording each run: it alarms where it finds a slowdown
among the newest N points (bench.series.steps.NEWEST: 3). A planted step is caught when an alarm
names it (within one point of where it was planted) by the Nth point after it. False alarms: the
alarms of checks on 40-point series of noise alone, per 100 checks. The noise of a point, by model:

- shared CPU, runs apart: this 2-core CI machine, two `bench.run` runs timed apart
  (docs/results/speed-gate/one-process-pair.json, design "apart": same-code ratios 0.63 to
  1.37); each point's factor is one of those ratios' square root, up or down, drawn at random.
- 8 process pairs: the same machine's same-code ratios with `bench.ab`'s eight process pairs
  (eight-process-pairs.json, 0.945 to 1.075), drawn the same way: a point that is itself the
  median of several processes.
- H100: normal, with the H100 check's median repeat spread (a relative IQR of 3.0%, so
  sigma = 3.0% / 1.349), from docs/results/nvidia-h100-80gb-hbm3.
- H200: normal, with the H200 modes check's median repeat spread (docs/results/nvidia-h200/
  modes-results.jsonl): the spread within one run, the least a point could have, as no run of
  the same code on one card apart in time has been recorded there.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.series.steps import NEWEST, NORMAL_IQR, regressions_in  # noqa: E402

BEFORE = 20
QUIET_SERIES = 40


def _ratios(name: str, design: str) -> list[float]:
    gates = json.loads((ROOT / "docs/results/speed-gate" / name).read_text())
    return [g["ratio"] for g in gates if g["design"] == design and not g["planted_slowdown"]]


def _sigma(pattern: str) -> float:
    """A normal point's sigma from the median relative IQR of the recorded rows."""
    spreads = []
    for path in glob.glob(str(ROOT / "docs/results" / pattern), recursive=True):
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.get("examples_per_s") and row.get("examples_per_s_iqr") is not None:
                spreads.append(row["examples_per_s_iqr"] / row["examples_per_s"])
    return statistics.median(spreads) / NORMAL_IQR


def noise_models() -> dict:
    """name -> a function of a random generator giving one point's factor."""
    def drawn(ratios):
        return lambda rng: math.sqrt(rng.choice(ratios)) ** rng.choice((1, -1))
    def normal(sigma):
        return lambda rng: math.exp(rng.gauss(0, sigma))
    h100 = _sigma("nvidia-h100-80gb-hbm3/**/results.jsonl")
    h200 = _sigma("nvidia-h200/modes-results.jsonl")
    return {
        "shared CPU, runs apart": drawn(_ratios("one-process-pair.json", "apart")),
        "shared CPU, 8 process pairs": drawn(_ratios("eight-process-pairs.json", "interleaved")),
        f"H100 repeats (sigma {h100:.1%})": normal(h100),
        f"H200 repeats (sigma {h200:.2%})": normal(h200),
    }


def series(rng, factor, length: int, step_at: int | None, step: float) -> list[float]:
    return [1000.0 * factor(rng) * (1 - step if step_at is not None and i >= step_at else 1)
            for i in range(length)]


def caught(values: list[float], penalty: float, newest: int) -> bool:
    """Whether a check names the planted step by the `newest`th point after it."""
    for n in range(BEFORE + 1, BEFORE + newest + 1):
        found = regressions_in(values[:n], [None] * n, penalty, newest=newest)
        if any(abs(step.at - BEFORE) <= 1 for step in found):
            return True
    return False


def false_alarms(values: list[float], penalty: float, newest: int) -> tuple[int, int]:
    """(alarms, checks) over every prefix of a series without a step."""
    checks = range(newest + 1, len(values) + 1)
    return sum(bool(regressions_in(values[:n], [None] * n, penalty, newest=newest))
               for n in checks), len(checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--penalties", default="6,8,10")
    parser.add_argument("--newest", type=int, default=NEWEST)
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    penalties = [float(p) for p in args.penalties.split(",")]
    print(f"{args.series} series a cell; a step is caught within {args.newest} points; false "
          f"alarms per 100 series-points")
    print("| noise | penalty | newest | 3% caught | 5% caught | 10% caught | false alarms / "
          "100 |")
    print("|---|---|---|---|---|---|---|")
    for name, factor in noise_models().items():
        for penalty in penalties:
            rates = []
            for step in (0.03, 0.05, 0.10):
                hits = sum(caught(series(rng, factor, BEFORE + args.newest, BEFORE, step),
                                  penalty, args.newest) for _ in range(args.series))
                rates.append(f"{hits / args.series:.0%}")
            alarms = checks = 0
            for _ in range(args.series):
                a, c = false_alarms(series(rng, factor, QUIET_SERIES, None, 0.0), penalty,
                                    args.newest)
                alarms, checks = alarms + a, checks + c
            print(f"| {name} | {penalty:g} | {args.newest} | {' | '.join(rates)} | "
                  f"{100 * alarms / checks:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
