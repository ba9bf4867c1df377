"""Gate a change on speed with the base and the candidate timed in turn, in one job: what a shared
CI runner needs, where two runs timed apart see two different machines.

    python -m bench.ab BASE_TREE [CANDIDATE_TREE] --set batch_size=256 --max-slowdown 10%

BASE_TREE and CANDIDATE_TREE (default: the current directory) are source trees of this project,
such as two git worktrees. Each side runs in a server process of its own tree's code
(bench.repeat_server) that builds the same cell and warms it up; the parent asks the two for one
repeat each in the order ABBA ABBA..., so a slow moment of the machine falls on both sides alike.
A process also settles at a speed of its own (where its memory and threads land), so the job
starts --pairs fresh pairs of processes, --rounds rounds each. A round gives a ratio, base
seconds over candidate seconds (below 1 is slower); a pair gives the median of its rounds; the
gate reads the median over pairs, with a 95% confidence interval. Exit status: 0 passed, 1 a
cell slowed past --max-slowdown, 2 bad input (a side that cannot serve, falls silent past
--timeout or does not speak the protocol), 130 for Ctrl-C. Each server's standard error goes to a
log file the error names; servers end with bench.ab, however it ends.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.basics.settings import Settings
from bench.basics.units import format_percent
from bench.cli import add_grid_options, percentage
from bench.planning.grid import Config, GridError, get_grid, parse_set
from bench.repeat_server import PROTOCOL
from lenet.cli import (
    OneLineParser,
    UsageError,
    exit_with,
    fail,
    positive_float,
    positive_int,
    resolve_device,
)

PROG = "python -m bench.ab"
PAIRS, ROUNDS = 8, 4
ANSWER_TIMEOUT_S = 600.0  # a compiled cell's build on a slow CPU takes minutes, not ten


class ServerError(Exception):
    """A server stopped, fell silent or answered with an error or in another protocol; the
    message says which side and why."""


def _die_with_parent() -> None:
    """In a server, before it runs: the kernel kills it when bench.ab ends, however it ends
    (a server of an older tree cannot be relied on to notice by itself)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


class Server:
    """A repeat server running the code of one source tree. Starting returns at once; `ready()`
    waits for it, so both sides start together. Its standard error goes to a log file, never a
    pipe nobody reads (a side that prints enough would block on it); each answer is waited for
    at most `timeout_s`."""

    def __init__(self, name: str, tree: Path, timeout_s: float):
        self.name, self.tree, self.timeout_s = name, tree, timeout_s
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.log = Path(tempfile.mkstemp(prefix=f"bench-ab-{name}-", suffix=".log")[1])
        with self.log.open("w") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.repeat_server"], cwd=tree, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                preexec_fn=_die_with_parent)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of file: the server is gone

    def ready(self) -> Server:
        hello = self._answer("starting")
        if hello.get("protocol") != PROTOCOL:
            self.close()
            raise ServerError(f"the {self.name} tree {self.tree} speaks repeat protocol "
                              f"{hello.get('protocol')}, this one {PROTOCOL}: gate it with "
                              f"python -m bench.compare instead")
        return self

    def _answer(self, doing: str) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            self.kill()
            raise ServerError(f"the {self.name} side did not answer within {self.timeout_s:g} s "
                              f"while {doing} and was stopped; its log: {self.log}") from None
        if not line:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            why = self.log.read_text(errors="replace").strip().splitlines()
            raise ServerError(f"the {self.name} tree {self.tree} could not serve repeats "
                              f"({why[-1] if why else f'exit status {self._process.returncode}'}"
                              f"); its log: {self.log}")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self.kill()
            raise ServerError(f"the {self.name} tree {self.tree} does not speak the repeat "
                              f"protocol: it printed {line.strip()[:80]!r}; gate it with "
                              f"python -m bench.compare instead")
        if "error" in answer:
            raise ServerError(f"the {self.name} side failed: {answer['error']}")
        return answer

    def ask(self, **request) -> dict:
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone: the answer says why
        return self._answer(request["op"])

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(10)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.kill()


@dataclass(frozen=True)
class Verdict:
    key: str
    pairs: tuple[tuple[float, ...], ...]  # per process pair, its rounds' ratios
    max_slowdown: float

    @property
    def pair_medians(self) -> list[float]:
        return [statistics.median(rounds) for rounds in self.pairs]

    @property
    def median(self) -> float:
        return statistics.median(self.pair_medians)

    @property
    def interval(self) -> tuple[float, float]:
        return median_interval(self.pair_medians)

    @property
    def failed(self) -> bool:
        return self.median < 1 - self.max_slowdown

    def line(self) -> str:
        low, high = self.interval
        words = (f"slowed past the {format_percent(self.max_slowdown)} allowed"
                 if self.failed else "within bounds")
        return (f"{self.key}: candidate at {self.median:.3f}x the base's speed (median of "
                f"{len(self.pairs)} process pairs of {len(self.pairs[0])} rounds, 95% interval "
                f"{low:.3f} to {high:.3f}): {words}")


def median_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics whose ranks the
    binomial(n, 1/2) puts `confidence` between (the whole range where n is too small)."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    below, k = 0.0, 0
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    # fewer than k of n values fall below the median with probability <= tail: the k-th
    # smallest bounds it from below, the k-th largest from above
    low = max(k - 1, 0)
    return ordered[low], ordered[n - 1 - low]


def run_rounds(base: Server, candidate: Server, config: Config, settings: Settings,
               data: str, data_root: str | None, rounds: int) -> tuple[float, ...]:
    """One pair's ratios for `config`: base seconds over candidate seconds, a round each."""
    request = {"op": "prepare", "config": asdict(config), "settings": asdict(settings),
               "data": data, "data_root": data_root}
    steps = base.ask(**request)["steps"]
    candidate.ask(**request)
    ratios = []
    for round_ in range(rounds):
        # ABBA: a machine that speeds up or slows down over a round favours neither side
        order = (base, candidate) if round_ % 2 == 0 else (candidate, base)
        seconds = {side.name: side.ask(op="repeat", steps=steps)["seconds"] for side in order}
        ratios.append(seconds["base"] / seconds["candidate"])
    return tuple(ratios)


def gate(trees: dict[str, Path], cells: list[Config], settings: Settings, args) -> list[Verdict]:
    """Every cell's verdict, from --pairs fresh pairs of servers."""
    found: dict[str, list[tuple[float, ...]]] = {c.key(): [] for c in cells}
    for _ in range(args.pairs):
        servers = [Server(name, tree, args.timeout) for name, tree in trees.items()]
        try:
            for server in servers:
                server.ready()
            for config in cells:
                found[config.key()].append(run_rounds(*servers, config, settings, args.data,
                                                      args.data_root, args.rounds))
        finally:
            for server in servers:
                server.close()
    return [Verdict(key, tuple(pairs), args.max_slowdown) for key, pairs in found.items()]


def _tree(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "bench" / "repeat_server.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text} is not a source tree of this project with bench/repeat_server.py (a "
            f"checkout from before bench.ab? gate it with python -m bench.compare)")
    return path


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("base", type=_tree, metavar="BASE_TREE")
    parser.add_argument("candidate", type=_tree, nargs="?", default=None,
                        metavar="CANDIDATE_TREE")
    add_grid_options(parser, grid="smoke", device="auto", data="synthetic",
                     data_choices=("real", "synthetic"))
    parser.add_argument("--pairs", type=positive_int, default=PAIRS,
                        help=f"fresh pairs of server processes (default {PAIRS})")
    parser.add_argument("--rounds", type=positive_int, default=ROUNDS,
                        help=f"repeats of each side per cell and pair (default {ROUNDS})")
    parser.add_argument("--max-slowdown", type=percentage, default=0.10, metavar="PCT")
    parser.add_argument("--timeout", type=positive_float, default=ANSWER_TIMEOUT_S,
                        metavar="SECONDS", help="stop a side that does not answer within this "
                                                f"(start, build, one repeat; default "
                                                f"{ANSWER_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    try:
        candidate = args.candidate or _tree(".")
        device = resolve_device(args.device)
        grid = get_grid(args.grid, device.type == "cuda", parse_set(args.set))
    except (UsageError, GridError, argparse.ArgumentTypeError) as exc:
        fail(PROG, str(exc))
    settings = Settings(min_repeat_s=grid.min_repeat_s, warmup_steps=grid.warmup_steps)
    try:
        verdicts = gate({"base": args.base, "candidate": candidate}, grid.cells(str(device)),
                        settings, args)
    except ServerError as exc:
        fail(PROG, str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: no verdict (the servers were stopped)", file=sys.stderr)
        return 128 + signal.SIGINT
    for verdict in verdicts:
        print(verdict.line())
    failed = [v for v in verdicts if v.failed]
    allowed = format_percent(args.max_slowdown)
    print(f"{len(failed)} of {len(verdicts)} cells slowed past {allowed}" if failed
          else f"passed: {len(verdicts)} cells within {allowed}")
    return 1 if failed else 0


if __name__ == "__main__":
    exit_with(main)
