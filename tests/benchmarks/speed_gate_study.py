"""How often the speed gate is wrong on this machine: false alarms (the same code failing a 10%
gate) and missed slowdowns (a planted 20% slowdown passing it), for two designs:

- apart: two `python -m bench.run` runs, one after the other, then `python -m bench.compare
  --max-slowdown 10%`: what a CI job did before bench.ab;
- interleaved: `python -m bench.ab BASE CANDIDATE --max-slowdown 10%`, base and candidate timed
  in turn, repeat by repeat, in one job, over --ab-pairs fresh pairs of processes.

    python tests/benchmarks/speed_gate_study.py [--pairs 10] [--designs apart,interleaved]
        [--ab-pairs 8] [--ab-rounds 4] [--out study.json]

The planted slowdown is real work: a copy of the tree whose training step runs twice every fourth
call (25% more time per example, a 20% drop in examples/s). The designs take turns, pair by pair,
so a busy spell of the machine falls on both. Not a test: figures to read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for helpers
from helpers import ROOT, slowed_tree  # noqa: E402

CELL = ["--set", "batch_size=256", "--set", "placement=device", "--device", "cpu"]
BOUND = ["--max-slowdown", "10%"]


def _python(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=tree, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def apart(candidate: Path, work: Path, name: str) -> dict:
    runs = {}
    for side, tree in (("base", ROOT), ("candidate", candidate)):
        out = work / f"{name}-{side}"
        result = _python(tree, "bench.run", "--grid", "smoke", *CELL, "--data", "synthetic",
                         "--no-report", "--no-find-max-batch", "--out", str(out))
        if result.returncode != 0:
            raise SystemExit(f"bench.run failed in {tree}: {result.stderr[-2000:]}")
        runs[side] = out
    gate = _python(ROOT, "bench.compare", str(runs["base"]), str(runs["candidate"]), *BOUND,
                   "--max-memory-growth", "1000%")
    rates = [json.loads((runs[s] / "results.jsonl").read_text())["examples_per_s"]
             for s in ("base", "candidate")]
    return {"failed": gate.returncode == 1, "ratio": rates[1] / rates[0]}


def interleaved(candidate: Path, pairs: int, rounds: int) -> dict:
    gate = _python(ROOT, "bench.ab", str(ROOT), str(candidate), *CELL, "--pairs", str(pairs),
                   "--rounds", str(rounds), *BOUND)
    if gate.returncode not in (0, 1):
        raise SystemExit(f"bench.ab failed: {gate.stderr[-2000:]}")
    ratio = float(gate.stdout.split("candidate at ")[1].split("x")[0])
    return {"failed": gate.returncode == 1, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="gates of each kind per design")
    parser.add_argument("--designs", default="apart,interleaved")
    parser.add_argument("--ab-pairs", type=int, default=8, help="bench.ab's --pairs")
    parser.add_argument("--ab-rounds", type=int, default=4, help="bench.ab's --rounds")
    parser.add_argument("--out", type=Path, help="write every gate's outcome here as JSON")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slow = slowed_tree(work / "slow", every=4)
        for pair in range(args.pairs):
            gates = {"apart": lambda c, n: apart(c, work, n),
                     "interleaved": lambda c, n: interleaved(c, args.ab_pairs, args.ab_rounds)}
            for design in args.designs.split(","):
                gate = gates[design]
                for planted, candidate in ((False, ROOT), (True, slow)):
                    start = time.monotonic()
                    outcome = gate(candidate, f"{pair}-{planted}")
                    records.append({"design": design, "planted_slowdown": planted,
                                    "pair": pair, **outcome,
                                    "seconds": time.monotonic() - start})
                    if design == "interleaved":
                        records[-1].update(ab_pairs=args.ab_pairs, ab_rounds=args.ab_rounds)
                    print(json.dumps(records[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"\n{'design':<12} {'false alarms':>14} {'missed 20%':>12} "
          f"{'ratio same (min-max)':>22} {'ratio slowed (min-max)':>24} {'s/gate':>7}")
    for design in args.designs.split(","):
        same = [r for r in records if r["design"] == design and not r["planted_slowdown"]]
        slowed = [r for r in records if r["design"] == design and r["planted_slowdown"]]
        alarms = sum(r["failed"] for r in same)
        missed = sum(not r["failed"] for r in slowed)
        seconds = sum(r["seconds"] for r in same + slowed) / len(same + slowed)
        print(f"{design:<12} {f'{alarms}/{len(same)}':>14} {f'{missed}/{len(slowed)}':>12} "
              f"{min(r['ratio'] for r in same):>10.3f}-{max(r['ratio'] for r in same):<11.3f}"
              f"{min(r['ratio'] for r in slowed):>12.3f}-{max(r['ratio'] for r in slowed):<11.3f}"
              f"{seconds:>7.0f}")


if __name__ == "__main__":
    main()
