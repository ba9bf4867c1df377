"""Gate a change on speed AND memory: compare two runs cell by cell, exit 1 on a regression.

    python -m bench.compare runs/base runs/new --max-slowdown 5% --max-memory-growth 5%

BASE and NEW are run directories (results.jsonl + env.json) or pytest-benchmark JSON files.
A change is a regression only when it is past the threshold AND larger than the measured spread
(IQR) of either side: noise is not a regression. Runs from different GPUs or torch versions are
refused unless --force. Exit status: 0 passed, 1 a regression, 2 bad input or refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import store
from bench.units import format_bytes
from lenet.cli import OneLineParser, UsageError, fail, percentage

PROG = "python -m bench.compare"
# Which memory figure gates: the allocator's where it was measured, else the tracked tensor peak.
# The CPU's resident set depends on what earlier cells left; the tracked tensor peak does not.
MEMORY_FIELDS = ("peak_allocated_bytes", "tracked_peak_bytes", "cpu_peak_rss_bytes")


@dataclass(frozen=True)
class Side:
    """One run, reduced to what the gate compares."""

    name: str
    env: dict
    rows: dict  # key -> row


@dataclass
class CellChange:
    key: str
    base: dict
    new: dict
    failures: list = field(default_factory=list)

    def ratio(self, name: str) -> float | None:
        a, b = self.base.get(name), self.new.get(name)
        return None if not a or b is None else b / a - 1

    @property
    def memory_field(self) -> str | None:
        return next((f for f in MEMORY_FIELDS if self.base.get(f) and self.new.get(f)), None)

    def display(self) -> tuple[str, ...]:
        """The cell, examples/s base, new, change, peak memory base, new, change: as text."""
        name = self.memory_field
        memory = (format_bytes(self.base[name]), format_bytes(self.new[name]),
                  _pct(self.ratio(name))) if name else ("not measured",) * 2 + ("n/a",)
        return (self.key, _num(self.base.get("examples_per_s")),
                _num(self.new.get("examples_per_s")), _pct(self.ratio("examples_per_s")),
                *memory)


def _from_pytest_benchmark(path: Path) -> Side:
    """pytest-benchmark's JSON: each benchmark's time turned into examples/s where its extra_info
    says how many examples a round trains (else rounds/s), its peak memory from extra_info."""
    data = json.loads(path.read_text())
    rows = {}
    for bench in data.get("benchmarks", []):
        stats, extra = bench["stats"], bench.get("extra_info", {})
        examples = extra.get("examples_per_round", 1)
        median, iqr = stats["median"], stats.get("iqr", 0.0)
        rows[bench["fullname"]] = {
            "key": bench["fullname"], "status": "ok",
            "examples_per_s": examples / median,
            # the times' IQR as the same fraction of the rate (first order: stays finite even
            # when a noisy run's IQR exceeds its median)
            "examples_per_s_iqr": examples / median * iqr / median,
            "peak_allocated_bytes": extra.get("peak_allocated_bytes"),
            "tracked_peak_bytes": extra.get("tracked_peak_bytes"),
        }
    machine = data.get("machine_info", {})
    env = {"gpu_name": machine.get("gpu_name"), "torch_version": machine.get("torch_version")}
    return Side(str(path), env, rows)


def load_side(path: Path) -> Side:
    if path.is_file() and path.suffix == ".json":
        try:
            return _from_pytest_benchmark(path)
        except (ValueError, KeyError) as exc:
            raise UsageError(f"{path} is not pytest-benchmark JSON ({exc})") from None
    if not (path / store.RESULTS).is_file():
        raise UsageError(f"{path} is neither a run directory (no {store.RESULTS}) nor a "
                         f"pytest-benchmark JSON file")
    rows, warnings = store.read_rows(path / store.RESULTS)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    env_path = path / store.ENV
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    return Side(str(path), env, {r["key"]: r for r in rows})


def refusal(base: Side, new: Side) -> str | None:
    """Why these two runs cannot be compared fairly, or None."""
    for name, words in (("gpu_name", "GPU"), ("torch_version", "torch")):
        a, b = base.env.get(name), new.env.get(name)
        if a != b:
            return f"the runs differ in {words}: {a or 'none'} against {b or 'none'}"
    return None


def compare(base: Side, new: Side, max_slowdown: float, max_memory_growth: float):
    """Per-cell changes (the worst first), and the keys found on one side only."""
    changes = []
    for key in base.rows.keys() & new.rows.keys():
        change = CellChange(key, base.rows[key], new.rows[key])
        _check(change, max_slowdown, max_memory_growth)
        changes.append(change)
    changes.sort(key=lambda c: (not c.failures, c.ratio("examples_per_s") or 0.0,
                                -(c.ratio(c.memory_field) or 0.0) if c.memory_field else 0.0))
    only_base = sorted(base.rows.keys() - new.rows.keys())
    only_new = sorted(new.rows.keys() - base.rows.keys())
    return changes, only_base, only_new


def _check(change: CellChange, max_slowdown: float, max_memory_growth: float) -> None:
    b, n = change.base, change.new
    if b["status"] == "ok" and n["status"] != "ok":
        change.failures.append(f"status went from ok to {n['status']}"
                               f"{': ' + n['error'] if n.get('error') else ''}")
    before, after = b.get("examples_per_s"), n.get("examples_per_s")
    if before and after:
        drop = before - after
        spread = max(b.get("examples_per_s_iqr") or 0.0, n.get("examples_per_s_iqr") or 0.0)
        if drop > max_slowdown * before and drop > spread:
            change.failures.append(
                f"examples_per_s fell from {before:,.0f} to {after:,.0f} "
                f"({after / before - 1:+.1%}), past the {max_slowdown:.0%} allowed and the "
                f"spread of {spread:,.0f}")
    name = change.memory_field
    if name is not None:
        before, after = b[name], n[name]
        if after - before > max_memory_growth * before:
            change.failures.append(
                f"{name} grew from {format_bytes(before)} to {format_bytes(after)} "
                f"({after / before - 1:+.1%}), past the {max_memory_growth:.0%} allowed")


def table_lines(changes: list[CellChange]) -> list[str]:
    row = "{:<42} {:>16} {:>12} {:>8}   {:>12} {:>12} {:>8}"
    lines = [row.format("cell", "examples/s base", "new", "change", "peak base", "new", "change")]
    lines += [row.format(*c.display()) + ("  FAIL" if c.failures else "") for c in changes]
    return lines


def _num(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the run (or pytest-benchmark JSON) to beat")
    parser.add_argument("new", type=Path, help="the candidate")
    parser.add_argument("--max-slowdown", type=percentage, default=0.05, metavar="PCT")
    parser.add_argument("--max-memory-growth", type=percentage, default=0.05, metavar="PCT")
    parser.add_argument("--force", action="store_true",
                        help="compare runs from different GPUs or torch versions")
    args = parser.parse_args(argv)
    try:
        base, new = load_side(args.base), load_side(args.new)
    except UsageError as exc:
        fail(PROG, str(exc))
    reason = refusal(base, new)
    if reason and not args.force:
        fail(PROG, f"{reason}; their figures are not comparable (pass --force to compare "
                   f"anyway)")
    changes, only_base, only_new = compare(base, new, args.max_slowdown, args.max_memory_growth)
    print("\n".join(table_lines(changes)))
    for key in only_base:
        print(f"only in {base.name}: {key}")
    for key in only_new:
        print(f"only in {new.name}: {key}")
    failing = [c for c in changes if c.failures]
    for c in failing:
        for failure in c.failures:
            print(f"REGRESSION {c.key}: {failure}")
    if not changes:
        fail(PROG, "the two runs share no cell; nothing was compared")
    print(f"{len(failing)} of {len(changes)} cells regressed" if failing
          else f"passed: {len(changes)} cells within {args.max_slowdown:.0%} speed and "
               f"{args.max_memory_growth:.0%} memory")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
