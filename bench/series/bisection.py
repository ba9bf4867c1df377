"""Narrow a step in a series to one commit: check out the commits between the last point before it
and the first after (git worktrees), and time each against the last good one with `bench.ab`,
the gate that copes with process-to-process noise, halving the range each time.

The step is first confirmed between its two ends: a step the gate cannot see on this machine is
said so, not bisected. Each gate bounds the slowdown at half the step the series showed, so a
commit that carries the step fails it and one that does not passes it with room on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.planning.grid import AXES, LENET

# a gate: (base tree, candidate tree) -> (slower past the bound, what the gate printed)
Gate = Callable[[Path, Path], tuple[bool, str]]


class BisectError(Exception):
    """A bisection that cannot be run or finished; the message says why and what to do."""


@dataclass
class Bisection:
    good: str
    bad: str
    culprit: str | None = None
    evidence: list[str] = field(default_factory=list)  # one line per gate, in the order run


def ab_options(settings_json: str | None, max_slowdown: float, pairs: int,
               rounds: int) -> list[str]:
    """bench.ab's options for the cell a series point measured."""
    if not settings_json:
        raise BisectError("the series holds no cell settings (a pytest-benchmark series, or "
                          "points recorded without them); bisect a series of bench.run runs")
    settings = json.loads(settings_json)
    if settings.get("model", LENET) != LENET:
        raise BisectError(f"bench.ab times LeNet cells; this series trains {settings['model']}")
    options = ["--grid", "smoke", "--device", settings["device"], "--data", "synthetic",
               "--max-slowdown", f"{100 * max_slowdown:g}%", "--pairs", str(pairs),
               "--rounds", str(rounds)]
    for name in AXES:
        value = settings[name]
        options += ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    return options


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
           say: Callable[[str], None] = print) -> Bisection:
    """The first commit after `good` that carries the slowdown `bad` shows."""
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
            line = f"{commit[:12]} {'slower' if failed else 'holds'}: {verdict}"
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
