"""Narrow a step in a series to one commit: check out the commits between the last point before it
and the first after (git worktrees), and gate each against the last good one, halving the range
each time: a slowdown with `bench.ab`, the gate that copes with process-to-process noise; a growth
of peak memory with one run of the cell a side, since memory figures repeat to the byte.

The step is first confirmed between its two ends: a step the gate cannot see on this machine is
said so, not bisected. Each gate bounds the slowdown at half the step the series showed, so a
commit that carries the step fails it and one that does not passes it with room on both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.basics.units import format_bytes
from bench.planning.grid import AXES, LENET

# a gate: (base tree, candidate tree) -> (worse past the bound, what the gate printed)
Gate = Callable[[Path, Path], tuple[bool, str]]


class BisectError(Exception):
    """A bisection that cannot be run or finished; the message says why and what to do."""


@dataclass
class Bisection:
    good: str
    bad: str
    culprit: str | None = None
    evidence: list[str] = field(default_factory=list)  # one line per gate, in the order run


def cell_options(settings_json: str | None) -> list[str]:
    """bench.run's options (bench.ab's too) for the one cell a series point measured."""
    if not settings_json:
        raise BisectError("the series holds no cell settings (a pytest-benchmark series, or "
                          "points recorded without them); bisect a series of bench.run runs")
    settings = json.loads(settings_json)
    options = ["--grid", "smoke", "--device", settings["device"], "--data", "synthetic"]
    if settings.get("model", LENET) != LENET:
        options += ["--model", settings["model"]]
        if settings.get("input_shape"):
            options += ["--input-shape", settings["input_shape"]]
    for name in AXES:
        value = settings[name]
        options += ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    return options


def ab_options(settings_json: str | None, max_slowdown: float, pairs: int,
               rounds: int) -> list[str]:
    """bench.ab's options for the cell a series point measured."""
    model = json.loads(settings_json).get("model", LENET) if settings_json else LENET
    if model != LENET:
        raise BisectError(f"bench.ab times LeNet cells; this series trains {model}")
    return [*cell_options(settings_json), "--max-slowdown", f"{100 * max_slowdown:g}%",
            "--pairs", str(pairs), "--rounds", str(rounds)]


def ab_gate(options: list[str], timeout_s: float) -> Gate:
    """A gate that runs `python -m bench.ab BASE CANDIDATE` with these options."""
    def gate(base: Path, candidate: Path) -> tuple[bool, str]:
        try:
            done = subprocess.run([sys.executable, "-m", "bench.ab", str(base), str(candidate),
                                   *options], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BisectError(f"bench.ab ran past {timeout_s:g} s on {candidate.name}") from None
        if done.returncode not in (0, 1):
            said = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise BisectError(f"bench.ab could not time {candidate.name}: {said[-1]}")
        verdicts = [line for line in done.stdout.splitlines() if line.strip()]
        return done.returncode == 1, verdicts[0] if verdicts else ""
    return gate


def memory_gate(options: list[str], field: str, fraction: float, bytes_: int,
                timeout_s: float) -> Gate:
    """A gate that measures the cell once in each tree (`python -m bench.run` with these
    options) and fails where the candidate's `field` (tracked_peak_bytes on the CPU, the
    allocator's peak on a GPU) grew past the bound over the base's: memory figures repeat to
    the byte, so one run a side is the whole evidence. Each tree is measured once."""
    measured: dict[Path, int] = {}

    def measure(tree: Path) -> int:
        if tree not in measured:
            with tempfile.TemporaryDirectory(prefix="bench-bisect-run-") as out:
                try:
                    done = subprocess.run(
                        [sys.executable, "-m", "bench.run", *options, "--repeats", "5",
                         "--no-find-max-batch", "--no-report", "--out", out],
                        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                        capture_output=True, text=True, timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise BisectError(f"bench.run ran past {timeout_s:g} s in {tree.name}") \
                        from None
                rows = [json.loads(line) for line in
                        (Path(out) / "results.jsonl").read_text().splitlines()] \
                    if done.returncode == 0 else []
            figure = rows[0].get(field) if rows else None
            if not figure:
                said = done.stderr.strip().splitlines() or [f"no {field} in its row"]
                raise BisectError(f"bench.run could not measure {field} in {tree.name}: "
                                  f"{said[-1]}")
            measured[tree] = figure
        return measured[tree]

    def gate(base: Path, candidate: Path) -> tuple[bool, str]:
        before, after = measure(base), measure(candidate)
        grew = after - before > max(fraction * before, bytes_)
        return grew, (f"{field} {format_bytes(before)} -> {format_bytes(after)} "
                      f"({after / before - 1:+.1%})")
    return gate


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines() or ["failed"]
        raise BisectError(f"git {' '.join(args)} in {repo}: {said[0]}")
    return done.stdout.strip()


def _commit(repo: Path, name: str) -> str:
    """The full hash of commit `name` in `repo`."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                           f"{name}^{{commit}}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise BisectError(f"commit {name} is not in {repo}: fetch it, or point --repo at a "
                          f"clone that holds it")
    return done.stdout.strip()


def commits_between(repo: Path, good: str, bad: str) -> list[str]:
    """The commits after `good` up to `bad`, oldest first, along the history that joins them."""
    good, bad = _commit(repo, good), _commit(repo, bad)
    if good == bad:
        raise BisectError(f"the step lies within one commit ({good[:12]}): nothing to bisect")
    if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", good, bad],
                      capture_output=True).returncode != 0:
        raise BisectError(f"{good[:12]} is not an ancestor of {bad[:12]} in {repo}: the two "
                          f"ends of the step are not on one line of history")
    return _git(repo, "rev-list", "--ancestry-path", "--reverse", f"{good}..{bad}").split()


def bisect(repo: Path, good: str, bad: str, gate: Gate,
           say: Callable[[str], None] = print, worse: str = "slower") -> Bisection:
    """The first commit after `good` that carries the change `bad` shows (a slowdown; `worse`
    names it)."""
    commits = commits_between(repo, good, bad)
    good = _commit(repo, good)
    result = Bisection(good, commits[-1])
    with tempfile.TemporaryDirectory(prefix="bench-bisect-") as scratch:
        trees: dict[str, Path] = {}

        def tree(commit: str) -> Path:
            if commit not in trees:
                trees[commit] = Path(scratch) / commit[:12]
                _git(repo, "worktree", "add", "--detach", str(trees[commit]), commit)
            return trees[commit]

        def slower(commit: str) -> bool:
            failed, verdict = gate(tree(good), tree(commit))
            line = f"{commit[:12]} {worse if failed else 'holds'}: {verdict}"
            result.evidence.append(line)
            say(line)
            return failed

        try:
            if not slower(commits[-1]):
                return result  # not reproduced here: no culprit
            low, high = -1, len(commits) - 1  # commits[high] is slower; low is the last good
            while high - low > 1:
                middle = (low + high) // 2
                if slower(commits[middle]):
                    high = middle
                else:
                    low = middle
            result.culprit = commits[high]
        finally:
            for path in trees.values():
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                                str(path)], capture_output=True)
    return result
