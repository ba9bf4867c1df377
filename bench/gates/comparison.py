"""Two runs compared cell by cell on speed and memory (and energy where asked): what
`python -m bench.compare` gates on and the report's comparison page shows.

A change is a regression only when it is past the threshold AND larger than the measured spread
(IQR) of either side: noise is not a regression. So is a cell that trained in the base and fails
in the candidate, and a figure that is not a number. Runs from different GPUs, torch versions,
data, memory caps or model architectures are refused (`refusal`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.basics.outcome import TRAINED, Outcome
from bench.basics.units import format_bytes, format_percent
from bench.gates.growth import growth_past
from bench.records import store
from bench.records.row import read_row
from lenet.cli import UsageError

# Which memory figure gates: the allocator's where it was measured, else the tracked tensor peak.
# The CPU's resident set depends on what earlier cells left; the tracked tensor peak does not.
MEMORY_FIELDS = ("peak_allocated_bytes", "tracked_peak_bytes", "cpu_peak_rss_bytes")
ENERGY_FIELD = "energy_j_per_1000_examples"
NUMBER_FIELDS = ("examples_per_s", "examples_per_s_iqr", *MEMORY_FIELDS, ENERGY_FIELD)


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
    # the two sides' energy methods where they differ: those figures are not compared
    energy_methods: tuple[str, str] | None = None

    def ratio(self, name: str) -> float | None:
        a, b = self.base[name], self.new[name]
        return None if not a or b is None else b / a - 1

    @property
    def memory_field(self) -> str | None:
        return next((f for f in MEMORY_FIELDS if self.base[f] and self.new[f]), None)

    def display(self) -> tuple[str, ...]:
        """The cell, examples/s base, new, change, peak memory base, new, change: as text."""
        name = self.memory_field
        memory = (format_bytes(self.base[name]), format_bytes(self.new[name]),
                  _pct(self.ratio(name))) if name else ("not measured",) * 2 + ("n/a",)
        return (self.key, _num(self.base["examples_per_s"]),
                _num(self.new["examples_per_s"]), _pct(self.ratio("examples_per_s")),
                *memory)


def _number(value, what: str, positive: bool = False) -> float | None:
    """A figure read from a file: None, or a float (NaN kept: the gate flags it). Anything else
    is bad input."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} is {value!r}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise UsageError(f"{what} is {value}, beyond any float") from None
    if positive and not number > 0:
        raise UsageError(f"{what} is {value}; it must be above 0")
    return number


def _checked_row(row: dict, where: str) -> dict:
    for name in NUMBER_FIELDS:
        row[name] = _number(row[name], f"{where}: {row['key']}'s {name}")
    return row


def _from_pytest_benchmark(path: Path) -> Side:
    """pytest-benchmark's JSON: each benchmark's time turned into examples/s where its extra_info
    says how many examples a round trains (else rounds/s), its peak memory from extra_info."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not pytest-benchmark JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks", []), list):
        raise UsageError(f"{path} is not pytest-benchmark JSON (no list of benchmarks)")
    rows = {}
    for bench in data.get("benchmarks", []):
        if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict) or \
                not isinstance(bench.get("fullname"), str):
            raise UsageError(f"{path}: a benchmark without fullname and stats")
        stats, extra = bench["stats"], bench.get("extra_info") or {}
        if not isinstance(extra, dict):
            raise UsageError(f"{path}: {bench['fullname']}'s extra_info is not an object")
        where = f"{path}: {bench['fullname']}'s"
        examples = _number(extra.get("examples_per_round", 1), f"{where} examples_per_round",
                           positive=True)
        median = _number(stats.get("median"), f"{where} median", positive=True)
        iqr = _number(stats.get("iqr", 0.0), f"{where} iqr") or 0.0
        rate = examples / median
        rows[bench["fullname"]] = _checked_row(read_row({
            "key": bench["fullname"], "status": Outcome.OK,
            "examples_per_s": rate,
            # the times' IQR as the same fraction of the rate (first order: stays finite even
            # when a noisy run's IQR exceeds its median)
            "examples_per_s_iqr": rate * iqr / median,
            "peak_allocated_bytes": extra.get("peak_allocated_bytes"),
            "tracked_peak_bytes": extra.get("tracked_peak_bytes"),
            ENERGY_FIELD: extra.get(ENERGY_FIELD),
        }, str(path)), str(path))
    machine, commit = data.get("machine_info") or {}, data.get("commit_info") or {}
    if not isinstance(machine, dict) or not isinstance(commit, dict):
        raise UsageError(f"{path}: machine_info or commit_info is not an object")
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), dict) else {}
    # as env.json names them, for the history (bench.series.points) as much as for the gate
    env = {"gpu_name": machine.get("gpu_name"), "torch_version": machine.get("torch_version"),
           "cpu": cpu.get("brand_raw") or machine.get("processor"), "cpu_count": cpu.get("count"),
           "host": machine.get("node"), "created_at": data.get("datetime"),
           "commit": commit.get("id"), "branch": commit.get("branch"),
           "commit_time": commit.get("time"), "project": commit.get("project")}
    return Side(str(path), env, rows)


def load_side(path: Path) -> Side:
    if path.is_file() and path.suffix == ".json":
        return _from_pytest_benchmark(path)
    if not (path / store.RESULTS).is_file():
        raise UsageError(f"{path} is neither a run directory (no {store.RESULTS}) nor a "
                         f"pytest-benchmark JSON file")
    rows, warnings = store.read_run(path)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    env = store.read_env(path, strict=True)
    # the cards the rows ran on, where they name them: a Slurm run's env.json is the submitting
    # host's, which may have no GPU; a pool's rows may name more than one model
    cards = ", ".join(sorted({r["gpu_name"] for r in rows if r["gpu_name"]}))
    # what makes figures comparable beyond the machine: the data and the cap they ran under
    env = {**env, "gpu_name": cards or env.get("gpu_name"),
           "data_source": ", ".join(sorted({str(r["data_source"]) for r in rows})) or None,
           "memory_cap_bytes": ", ".join(sorted({str(r["memory_cap_bytes"]) for r in rows}))
           or None,
           "model_fingerprint": ", ".join(sorted({r["model_fingerprint"] for r in rows
                                                  if r["model_fingerprint"]})) or None,
           "memory_settings": _settings_words(env.get("memory_settings"))}
    where = str(path / store.RESULTS)
    return Side(str(path), env, {r["key"]: _checked_row(r, where) for r in rows})


def _settings_words(settings) -> str | None:
    """env.json's memory settings (bench.records.env.MEMORY_SETTINGS) in words; None where a
    run from before recorded none."""
    if not isinstance(settings, dict):
        return None
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "the defaults"


COMPARABLE = (("gpu_name", "GPU"), ("torch_version", "torch"), ("data_source", "data"),
              ("memory_cap_bytes", "memory cap"), ("model_fingerprint", "model architecture"),
              ("memory_settings", "memory settings"))
# Figures older runs did not record: compared only where both sides have them.
_RECORDED_LATER = ("model_fingerprint", "memory_settings")


def refusal(base: Side, new: Side) -> str | None:
    """Why these two runs cannot be compared fairly, or None."""
    for name, words in COMPARABLE:
        if name not in base.env or name not in new.env:
            continue  # pytest-benchmark's JSON says nothing of data or caps
        a, b = base.env.get(name), new.env.get(name)
        if name in _RECORDED_LATER and not (a and b):
            continue
        if a != b:
            return f"the runs differ in {words}: {a or 'none'} against {b or 'none'}"
    return None


def compare(base: Side, new: Side, max_slowdown: float, max_memory_growth: float,
            max_energy_growth: float | None = None):
    """Per-cell changes (the worst first), and the keys found on one side only."""
    changes = []
    for key in base.rows.keys() & new.rows.keys():
        change = CellChange(key, base.rows[key], new.rows[key])
        _check(change, max_slowdown, max_memory_growth, max_energy_growth)
        changes.append(change)
    changes.sort(key=lambda c: (not c.failures, _sortable(c.ratio("examples_per_s")),
                                -_sortable(c.ratio(c.memory_field)) if c.memory_field else 0.0))
    only_base = sorted(base.rows.keys() - new.rows.keys())
    only_new = sorted(new.rows.keys() - base.rows.keys())
    return changes, only_base, only_new


def _sortable(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else value


def _check(change: CellChange, max_slowdown: float, max_memory_growth: float,
           max_energy_growth: float | None) -> None:
    b, n = change.base, change.new
    if b["status"] in TRAINED and n["status"] not in TRAINED:
        change.failures.append(f"status went from {b['status']} to {n['status']}"
                               f"{': ' + n['error'] if n['error'] else ''}")
    elif b["status"] == Outcome.OK and n["status"] != Outcome.OK:
        change.failures.append(f"status went from ok to {n['status']}")
    not_numbers = [f"{name} is not a number in the {side}"
                   for name in ("examples_per_s", *MEMORY_FIELDS, ENERGY_FIELD)
                   for side, row in (("base", b), ("candidate", n))
                   if row[name] is not None and math.isnan(row[name])]
    if not_numbers:  # NaN compares false with everything: it would pass every bound
        change.failures += not_numbers
        return
    before, after = b["examples_per_s"], n["examples_per_s"]
    if before and after:
        drop = before - after
        spread = max(b["examples_per_s_iqr"] or 0.0, n["examples_per_s_iqr"] or 0.0)
        if drop > max_slowdown * before and drop > spread:
            change.failures.append(
                f"examples_per_s fell from {before:,.0f} to {after:,.0f} "
                f"({after / before - 1:+.1%}), past the {format_percent(max_slowdown)} allowed "
                f"and the spread of {spread:,.0f}")
    name = change.memory_field
    grew = name and growth_past(name, b[name], n[name], max_memory_growth, format_bytes)
    if grew:
        change.failures.append(grew)
    before, after = b[ENERGY_FIELD], n[ENERGY_FIELD]
    if max_energy_growth is None or not before or after is None:
        return
    if b["energy_method"] != n["energy_method"]:
        # a card's counter, its power samples and the CPU packages' counter measure different
        # things: a change between them says nothing of the code
        change.energy_methods = (b["energy_method"], n["energy_method"])
    elif grew := growth_past(ENERGY_FIELD, before, after, max_energy_growth,
                             lambda joules: f"{joules:,.3g} J"):
        change.failures.append(grew)


def busy_notes(changes: list[CellChange], base_name: str, new_name: str) -> list[str]:
    """A line for each side of a cell timed while the machine was busy: its speed change may be
    the machine's, not the code's."""
    notes = []
    for c in changes:
        for name, row in ((base_name, c.base), (new_name, c.new)):
            if row["busy"]:
                notes.append(f"note: {c.key} was timed while the machine was busy in {name} "
                             f"({'; '.join(row['busy_reasons'])}): its speed is not vouched "
                             f"for; on a shared machine gate speed with python -m bench.ab")
    return notes


def method_notes(changes: list[CellChange], base_name: str, new_name: str) -> list[str]:
    """A line for each cell whose energy the two sides measured in different ways."""
    return [f"note: {c.key}'s energy was measured by {a} in {base_name} and by {b} in "
            f"{new_name}: not compared" for c in changes if c.energy_methods
            for a, b in [c.energy_methods]]


def table_lines(changes: list[CellChange]) -> list[str]:
    row = "{:<42} {:>16} {:>12} {:>8}   {:>12} {:>12} {:>8}"
    lines = [row.format("cell", "examples/s base", "new", "change", "peak base", "new", "change")]
    lines += [row.format(*c.display()) + ("  FAIL" if c.failures else "") for c in changes]
    return lines


def _num(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"
