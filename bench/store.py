"""The run directory: `plan.json` (what to run), `env.json` (where), `results.jsonl` (one row per
cell) and `boundaries.jsonl` (one row per boundary search).

Rows are appended, flushed and fsync'd one at a time, so a `kill -9` loses at most the row being
written. A reader takes every whole line and skips a torn last one with a warning; before a
resumed run appends, the torn tail is cut off so it cannot glue itself to the next row.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

PLAN = "plan.json"
ENV = "env.json"
RESULTS = "results.jsonl"
BOUNDARIES = "boundaries.jsonl"


class RunDirError(Exception):
    """The directory cannot hold or is not a run; the message says what to do."""


def default_run_dir(now: datetime | None = None) -> Path:
    return Path("runs") / (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def create(path: Path, plan: dict, env: dict) -> Path:
    """Make a new run directory; refuse one that already holds a run."""
    if (path / PLAN).exists() or (path / RESULTS).exists():
        raise RunDirError(f"{path} already holds a run; continue it with --resume {path}, "
                          f"or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / ENV, env)
        write_json(path / PLAN, plan)  # last: a directory with a plan is a run
    except OSError as exc:
        raise RunDirError(f"cannot write the run directory {path}: {exc.strerror or exc}; "
                          f"choose a writable --out") from None
    return path


def open_existing(path: Path) -> dict:
    """The plan of a run to resume."""
    if not (path / PLAN).is_file():
        raise RunDirError(f"{path} is not a run directory (no {PLAN}); start one with "
                          f"python -m bench.run --out {path}")
    try:
        plan = json.loads((path / PLAN).read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {path / PLAN}: {exc}; start a new run instead") from None
    if not os.access(path, os.W_OK):
        raise RunDirError(f"{path} is not writable; fix its permissions to resume it")
    return plan


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def cut_torn_tail(path: Path) -> bool:
    """Drop a last line that has no newline (a row cut off by a crash). True if one was cut."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def append_row(path: Path, row: dict) -> None:
    line = json.dumps(row, default=str, allow_nan=True) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Every whole row, and a warning for each line that could not be read."""
    rows: list[dict] = []
    warnings: list[str] = []
    if not path.is_file():
        return rows, warnings
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn = number == len(lines)  # no newline after it: cut off mid-write
            what = "a torn last line (the run was stopped mid-write)" if torn else "a bad line"
            warnings.append(f"{path}: skipped {what} at line {number}")
    return rows, warnings
