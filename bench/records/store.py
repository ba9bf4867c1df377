"""The run directory, and the one reader of it that `bench.run`, `bench.execution.slurm`,
`bench.compare` and the reports share: `plan.json` (what to run: bench.planning.plan_file.Plan),
`env.json` (where), `results.jsonl` (one row per cell) and `boundaries.jsonl` (one row per boundary
search); under `--executor slurm` also `slurm.json` (each submission's job array), `slurm/` (its
logs), `hosts/` (the env of each host that ran cells) and `parts/`, a results and a boundaries file
per array task, each with one writer. `read_run` and `read_run_boundaries` read the union. The plan
and every row carry the schema version they were written at; `read_results` and
`read_boundaries` are the one way to read rows back, each at this version with every key present
(bench.basics.schema). A reader that must not guess (a resume, a gate) reads strictly and refuses
what it cannot read; the report reads leniently and says "not measured" for it.

Rows are appended, flushed and fsync'd one at a time, so a `kill -9` loses at most the row being
written. A reader takes every whole line and skips a torn last one, and any line that is not a
row, with a warning; before a resumed run appends, the torn tail is cut off so it cannot glue
itself to the next row. One process at a time works in a run directory: it holds `.lock`, which
the kernel lets go of when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import stat
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench.basics.outcome import Outcome
from bench.planning.plan_file import Plan, PlanError
from bench.records.boundary import read_boundary
from bench.records.row import read_row

PLAN = "plan.json"
ENV = "env.json"
RESULTS = "results.jsonl"
BOUNDARIES = "boundaries.jsonl"
LOCK = ".lock"
RUN_DIR_MODE = 0o750  # owner: all; group: read; others: nothing
PARTS = "parts"
SUBMISSIONS = "slurm.json"  # every submission: its array job and which cells each task holds
SLURM_LOGS = "slurm"  # submitit's folder: each task's pickled call and its stdout and stderr
HOSTS = "hosts"  # one env.json per host that ran cells: hosts/<host>.json
# what a run directory may hold besides .lock: a new run goes only where none of these is
RUN_FILES = (PLAN, ENV, RESULTS, BOUNDARIES, PARTS, SUBMISSIONS, SLURM_LOGS, HOSTS, "report",
             "compare")
# What makes a line of results.jsonl a row, and a line of boundaries.jsonl a boundary
ROW_FIELDS = ("key", "status")
BOUNDARY_FIELDS = ("key", "dtype")


class RunDirError(Exception):
    """The directory cannot hold or is not a run; the message says what to do."""


class StoreWriteError(RunDirError):
    """A row could not be written (a full disk, a file made read-only); what was written before
    is intact."""


@contextlib.contextmanager
def locked(path: Path):
    """Hold the run directory `path` for this process; refuse, naming the holder, if another
    process holds it."""
    lock_path = path / LOCK
    try:
        handle = lock_path.open("a+")
    except OSError as exc:
        raise RunDirError(f"cannot lock {path}: {exc.strerror or exc}; choose a writable "
                          f"--out") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(f"{path} is in use by {holder}; wait for it to finish, or stop "
                              f"it (it can be resumed)") from None
        handle.seek(0)
        handle.truncate()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {platform.node()} since {started} "
                     f"({' '.join(['python', *sys.argv])})\n")
        handle.flush()
        yield


def default_run_dir(now: datetime | None = None) -> Path:
    return Path("runs") / (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def make_dir(path: Path) -> None:
    """The run directory, made readable by its owner's group at most (a Slurm run's holds the
    pickled calls its tasks execute); an existing one that other users can write is refused."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not existed:
            path.chmod(RUN_DIR_MODE)  # whatever the umask: a loose one would let others in
    except OSError as exc:
        raise RunDirError(f"cannot write the run directory {path}: {exc.strerror or exc}; "
                          f"choose a writable --out") from None
    refuse_open_to_all(path)


def refuse_open_to_all(path: Path) -> None:
    """Refuse a run directory that any user can write: they could change what it executes."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # not there yet: make_dir makes it closed
    if mode & stat.S_IWOTH:
        raise RunDirError(f"{path} can be written by any user (mode {stat.filemode(mode)}), who "
                          f"could change what the run executes; chmod o-w {path}, or choose "
                          f"another --out")


def create(path: Path, plan: Plan, env: dict) -> Path:
    """Make a new run directory; refuse one that already holds a run (refuse_used)."""
    refuse_used(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / ENV, env)
        write_plan(path, plan)  # last: a directory with a plan is a run
    except OSError as exc:
        raise RunDirError(f"cannot write the run directory {path}: {exc.strerror or exc}; "
                          f"choose a writable --out") from None
    return path


def refuse_used(path: Path) -> None:
    """Refuse a directory for a new run where it holds any run file, even without its plan:
    rows left by an earlier run would be read as this one's."""
    refuse_open_to_all(path)
    if (path / PLAN).exists():
        raise RunDirError(f"{path} already holds a run; continue it with --resume {path}, "
                          f"or choose another --out")
    left = [name for name in RUN_FILES if (path / name).exists()]
    if left:
        raise RunDirError(f"{path} holds files of an earlier run ({', '.join(left)}) without "
                          f"its {PLAN}; choose another --out, or remove them")


def open_existing(path: Path) -> Plan:
    """The plan of a run to resume."""
    refuse_open_to_all(path)
    if not (path / PLAN).is_file():
        raise RunDirError(f"{path} is not a run directory (no {PLAN}); start one with "
                          f"python -m bench.run --out {path}")
    try:
        raw = json.loads((path / PLAN).read_text())
    except PermissionError as exc:
        raise RunDirError(f"cannot read {path / PLAN}: {exc.strerror}; fix its permissions "
                          f"(or run as its owner)") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {path / PLAN}: {exc}; start a new run instead") from None
    plan = read_plan(raw, path / PLAN)
    if not os.access(path, os.W_OK):
        raise RunDirError(f"{path} is not writable; fix its permissions to resume it")
    return plan


def read_plan(raw, where: Path) -> Plan:
    """A stored plan at this schema; NewerSchemaError for a newer plan, whose cells may have
    axes this version lacks, RunDirError for one this version cannot read."""
    try:
        return Plan.from_dict(raw, str(where))
    except PlanError as exc:
        raise RunDirError(str(exc)) from None


def plan_or_none(run_dir: Path) -> Plan | None:
    """The run's plan, or None where there is none to read (missing, torn, or not a plan): for
    readers that show what they can without one. A plan from a newer version is still refused."""
    try:
        raw = json.loads((run_dir / PLAN).read_text())
    except (OSError, ValueError):
        return None
    try:
        return Plan.from_dict(raw, str(run_dir / PLAN))
    except PlanError:
        return None


def write_plan(run_dir: Path, plan: Plan) -> None:
    write_json(run_dir / PLAN, plan.as_dict())


def read_env(run_dir: Path, strict: bool) -> dict:
    """env.json: {} where there is none (a run from before it, a pytest-benchmark side). One
    that cannot be read, or is not an object, is RunDirError where `strict`, else {}."""
    path = run_dir / ENV
    try:
        env = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        if strict:
            raise RunDirError(f"cannot read {path}: {exc}") from None
        return {}
    if not isinstance(env, dict):
        if strict:
            raise RunDirError(f"{path} is not an object")
        return {}
    return env


def read_submissions(run_dir: Path) -> list[dict]:
    """Each Slurm submission of the run (slurm.json), oldest first; [] before the first."""
    path = run_dir / SUBMISSIONS
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["submissions"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}; its jobs cannot be followed (scancel "
                          f"them by name, lenet-bench-{run_dir.name})") from None


def add_submission(run_dir: Path, submission: dict) -> None:
    """Record a submission in slurm.json, after those before it."""
    write_json(run_dir / SUBMISSIONS, {"submissions": read_submissions(run_dir) + [submission]})


def write_json(path: Path, obj: dict) -> None:
    """Write `path` whole or not at all: a temporary file of this writer's own beside it (two
    Slurm tasks on one host write its hosts file at once), then a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    """Append one row and wait until it is on disk. A write that fails leaves the file as it
    was (a torn part is cut off) and raises StoreWriteError."""
    line = json.dumps(row, default=str, allow_nan=True) + "\n"
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            cut_torn_tail(path)
        raise StoreWriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_results(path: Path) -> tuple[list[dict], list[str]]:
    """Every row of a results file at this schema, and a warning for each line that is not one.
    Raises NewerSchemaError for a row written by a newer version."""
    rows, warnings = _read_lines(path, ROW_FIELDS)
    return [read_row(row, f"{path}: {row['key']}") for row in rows], warnings


def read_run(run_dir: Path) -> tuple[list[dict], list[str]]:
    """The run's rows: its own file's and every Slurm task's, one per cell. A row saying its
    job ended gives way to a row of the same cell that ran (the cell was run again by
    --resume). RunDirError where a file holds rows of another run: a cell the plan does not
    hold, or another architecture than the plan's."""
    plan = plan_or_none(run_dir)
    rows, warnings = _own_rows(run_dir / RESULTS, plan)
    for path in sorted((run_dir / PARTS).glob("results-*.jsonl")):
        more, more_warnings = _own_rows(path, plan)
        rows += more
        warnings += more_warnings
    ran = done_keys(rows)
    # where a cell's job ended more than once (resumed, and ended again), the last one says why
    last_end = {r["key"]: n for n, r in enumerate(rows) if r["error_kind"] == Outcome.JOB_ENDED}
    return [r for n, r in enumerate(rows) if r["error_kind"] != Outcome.JOB_ENDED
            or (r["key"] not in ran and last_end[r["key"]] == n)], warnings


def _own_rows(path: Path, plan: Plan | None) -> tuple[list[dict], list[str]]:
    """A results file's rows, refused where any belongs to another run: one rule for the local
    resume, the Slurm tasks, the report and the gate."""
    rows, warnings = read_results(path)
    if plan is None or not rows:
        return rows, warnings
    planned = {c.key() for c in plan.cells}
    strangers = sorted({r["key"] for r in rows} - planned)
    if strangers:
        raise RunDirError(
            f"{path} holds {len(strangers)} rows of cells that {PLAN} does not plan (such as "
            f"{strangers[0]}): it mixes two runs; start a new run with another --out")
    fingerprint = plan.model.fingerprint
    others = sorted({r["model_fingerprint"] for r in rows} - {fingerprint, None})
    if fingerprint is not None and others:
        raise RunDirError(
            f"{path} holds rows of another architecture ({others[0]}) than {PLAN}'s "
            f"({fingerprint}): it mixes two models; start a new run with another --out")
    return rows, warnings


def done_keys(rows: list[dict]) -> set[str]:
    """The cells that have a row of their own: every row but one saying its Slurm job ended."""
    return {r["key"] for r in rows if r["error_kind"] != Outcome.JOB_ENDED}


def part(run_dir: Path, kind: str, job_id: str) -> Path:
    """A Slurm task's own file of `kind` (results or boundaries) in the run directory."""
    return run_dir / PARTS / f"{kind}-{job_id}.jsonl"


def done_boundaries(run_dir: Path) -> set[tuple[str, str | None]]:
    """The searches the run holds, as (boundary key, card model; None on the CPU)."""
    return {(b["key"], b["gpu_name"]) for b in read_run_boundaries(run_dir)[0]}


def read_run_boundaries(run_dir: Path) -> tuple[list[dict], list[str]]:
    rows, warnings = read_boundaries(run_dir / BOUNDARIES)
    for path in sorted((run_dir / PARTS).glob("boundaries-*.jsonl")):
        more, more_warnings = read_boundaries(path)
        rows += more
        warnings += more_warnings
    return rows, warnings


def read_boundaries(path: Path) -> tuple[list[dict], list[str]]:
    rows, warnings = _read_lines(path, BOUNDARY_FIELDS)
    return [read_boundary(row, f"{path}: {row['key']}") for row in rows], warnings


def _read_lines(path: Path, fields: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """Every whole row (a JSON object with `fields`), and a warning for each other line."""
    rows: list[dict] = []
    warnings: list[str] = []
    if not path.is_file():
        return rows, warnings
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions "
                          f"(or run as its owner)") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn = number == len(lines)  # no newline after it: cut off mid-write
            what = "a torn last line (the run was stopped mid-write)" if torn else "a bad line"
            warnings.append(f"{path}: skipped {what} at line {number}")
            continue
        if not isinstance(row, dict) or not all(isinstance(row.get(f), str) for f in fields):
            warnings.append(f"{path}: skipped line {number}: not a row (it needs "
                            f"{', '.join(fields)})")
            continue
        rows.append(row)
    return rows, warnings
