"""What a run gives the history: one `Recorded` (which run, at which commit, on which machine,
card and model) and a `Point` per cell, from a run directory or a pytest-benchmark JSON file,
read through the same reader the gate uses.

A series is one cell (or benchmark) of one model on one machine class and card: the CPU's name
and the threads torch used, and the GPU's name ("cpu" without one). A run of another model or on
another card starts a series of its own; figures are never mixed across them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.basics.outcome import TRAINED
from bench.basics.units import format_bytes
from bench.gates.comparison import ENERGY_FIELD, MEMORY_FIELDS, load_side
from bench.planning.grid import LENET
from bench.records import store
from bench.records.row import config_of
from lenet.cli import UsageError


@dataclass(frozen=True)
class Recorded:
    """One run as the history keeps it. `uid` names the run, not its contents: a run recorded
    again (resumed since, say) replaces its points rather than adding a second run."""

    uid: str
    source: str  # "run" or "pytest-benchmark"
    path: str
    commit_id: str | None
    branch: str | None
    commit_time: str | None  # ISO 8601, UTC: orders a series' points
    recorded_at: str  # when the run was made, ISO 8601, UTC
    machine: str
    card: str
    model: str
    torch_version: str | None


@dataclass(frozen=True)
class Point:
    """One cell's figures in one run."""

    cell: str
    status: str
    examples_per_s: float | None = None
    examples_per_s_iqr: float | None = None
    memory_bytes: int | None = None
    memory_field: str | None = None  # which figure memory_bytes is (bench.gates.comparison)
    energy_j_per_1000_examples: float | None = None
    busy: bool | None = None  # timed while other work ran: kept, but not trusted for speed
    # the cell's settings (bench.planning.grid.Config) as JSON, for a bisection to rebuild it;
    # None for a pytest-benchmark point
    settings: str | None = None


def utc(text: str | None) -> str | None:
    """An ISO 8601 time as UTC, so that times sort as text; None where there is none."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def commit_time_of(commit: str | None) -> str | None:
    """The commit's time from the git repository here, where it holds the commit."""
    if not commit:
        return None
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%cI", commit], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return utc(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _cell(key: str, row: dict) -> str:
    """The series' cell: its key, and the conditions its figures hold under where they are not
    the usual ones (synthetic data, a memory cap), which keep it apart from the usual cell."""
    conditions = [f"capped at {format_bytes(row['memory_cap_bytes'])}"] \
        if row["memory_cap_bytes"] else []
    if row["data_source"] == "synthetic":
        conditions.insert(0, "synthetic data")
    return f"{key} ({', '.join(conditions)})" if conditions else key


def _point(key: str, row: dict, source: str) -> Point:
    trained = row["status"] in TRAINED
    memory_field = next((f for f in MEMORY_FIELDS if row[f]), None) if trained else None
    return Point(
        cell=_cell(key, row), status=str(row["status"]),
        examples_per_s=row["examples_per_s"] if trained else None,
        examples_per_s_iqr=row["examples_per_s_iqr"] if trained else None,
        memory_bytes=int(row[memory_field]) if memory_field else None,
        memory_field=memory_field,
        energy_j_per_1000_examples=row[ENERGY_FIELD] if trained else None,
        busy=row["busy"],
        settings=json.dumps(asdict(config_of(row))) if source == "run" else None)


def _uid(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _model_of(path: Path) -> str:
    """A run directory's model, with its input shape where not the model's own."""
    plan = store.plan_or_none(path)
    if plan is None:
        return LENET  # a run from before plans named their model trained LeNet
    return f"{plan.model.name} {plan.input_shape}" if plan.input_shape else plan.model.name


def read(path: Path, commit: str | None = None, branch: str | None = None
         ) -> tuple[Recorded, list[Point]]:
    """The run at `path` (a run directory or a pytest-benchmark JSON file) as the history keeps
    it; `commit` and `branch` replace what the run says of itself. UsageError, in one line, for
    anything that is neither."""
    side = load_side(path)
    source, env = ("pytest-benchmark" if path.is_file() else "run"), side.env
    points = [_point(key, row, source) for key, row in sorted(side.rows.items())]
    cpu = env.get("cpu") or "unknown CPU"
    if source == "pytest-benchmark":
        machine = f"{cpu} ({env.get('cpu_count') or '?'} CPUs)"
        model = env.get("project") or "pytest-benchmark"
    else:
        machine = f"{cpu} ({env.get('torch_threads') or '?'} threads)"
        model = _model_of(path)
    recorded_at = env.get("created_at")
    if not recorded_at:
        where = path if source == "pytest-benchmark" else path / store.ENV
        raise UsageError(f"{where} does not say when the run was made")
    commit = commit or env.get("commit")
    recorded = Recorded(
        uid=_uid(source, env.get("host"), utc(recorded_at), model),
        source=source, path=str(path.resolve()), commit_id=commit,
        branch=branch or env.get("branch"),
        commit_time=(utc(env.get("commit_time")) if commit == env.get("commit") else None)
        or commit_time_of(commit),
        recorded_at=utc(recorded_at), machine=machine, card=env.get("gpu_name") or "cpu",
        model=model, torch_version=env.get("torch_version"))
    return recorded, points
