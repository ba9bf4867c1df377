"""`--executor slurm`: a run's cells as a Slurm job array, submitted through submitit.

Each array task runs a share of the cells on the node Slurm gives it (one GPU each by default)
and appends its rows to a file of its own, `parts/results-<job>.jsonl`, inside the run directory,
which must be on storage every node shares; readers take the union (bench.records.store.read_run).
The submitting process waits, showing progress, and when a task ends without having run all its
cells it records one `job_ended` row per unfinished cell, naming the job and the state Slurm
gives; `--resume RUN_DIR` runs those cells again and picks up tasks still queued or running.
Slurm's state is read with `scontrol`, which works where accounting (and so `sacct`) is off.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import torch

from bench.basics.outcome import Attempt, Outcome
from bench.execution import slurm_task
from bench.execution.cell import CellResult
from bench.execution.runner import Stamps
from bench.execution.session import Session, build_row
from bench.planning import devices
from bench.planning import plan as planning
from bench.planning.plan_file import Plan, SlurmOptions
from bench.records import env as run_env
from bench.records import store
from bench.records.row import Row
from lenet.cli import UsageError

# a task in one of these states may still write rows
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                         "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING",
                         "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"})
INSTALL_HINT = "pip install 'lenet-bench[slurm]' (or pip install -e '.[slurm]' in a checkout)"


# --slurm keys that a bench.run option of its own sets: given both ways they would conflict
OWN_OPTIONS = {"time": "time_limit", "partition": "partition", "gpus_per_task": "gpus_per_task"}
# sbatch's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds
_TIME = re.compile(r"(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)")


def parse_extra(pairs: list[str]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", key.strip()):
            raise UsageError(f"--slurm {pair!r}: write KEY=VALUE, an sbatch option without its "
                             f"dashes, e.g. --slurm qos=high or --slurm account=ml")
        key, value = key.strip().replace("-", "_"), value.strip()
        if key in extra:
            raise UsageError(f"--slurm {key} is given twice ({extra[key]!r} and {value!r}); "
                             f"give it once")
        if key in ("array", "job_name", "output", "error"):
            raise UsageError(f"--slurm {key}: the run sets it itself (the array from --tasks, "
                             f"the logs under the run directory); drop it")
        extra[key] = value
    if "time" in extra:
        time_minutes(extra["time"])
    return extra


def time_minutes(text: str) -> int:
    """sbatch's --time in whole minutes (rounded up), or UsageError naming its formats."""
    match = _TIME.fullmatch(text)
    if not match:
        raise UsageError(f"--slurm time={text}: not a Slurm time; write minutes (90), "
                         f"hours:minutes:seconds (1:30:00) or days-hours[:minutes] (1-12)")
    n = {k: int(v) if v else 0 for k, v in match.groupdict().items()}
    if match["days"]:
        seconds = ((n["days"] * 24 + n["dh"]) * 60 + n["dm"]) * 60 + n["ds"]
    elif match["c"]:
        seconds = (n["a"] * 60 + n["b"]) * 60 + n["c"]
    else:
        seconds = n["a"] * 60 + n["b"]
    if seconds <= 0:
        raise UsageError(f"--slurm time={text}: a task needs a time limit above 0")
    return -(-seconds // 60)


def options_of(partition: str | None, gpus_per_task: int | None, time_limit_min: int | None,
               tasks: int | None, extra: dict[str, str]) -> tuple[SlurmOptions, bool]:
    """The job array's options from bench.run's own and --slurm's (parse_extra), refusing one
    set both ways; and whether the GPUs per task were given at all."""
    extra = dict(extra)
    given = {"time_limit": time_limit_min, "partition": partition, "gpus_per_task": gpus_per_task}
    for key, name in OWN_OPTIONS.items():
        if key in extra and given[name] is not None:
            raise UsageError(f"--slurm {key}={extra[key]} and --{name.replace('_', '-')} "
                             f"{given[name]} both set it; give one")
    if "time" in extra:
        time_limit_min = time_minutes(extra.pop("time"))
    if "gpus_per_task" in extra:
        value = extra.pop("gpus_per_task")
        if not value.isdigit():
            raise UsageError(f"--slurm gpus_per_task={value}: give a whole number")
        gpus_per_task = int(value)
    partition = partition or extra.pop("partition", None)
    return SlurmOptions(partition, gpus_per_task or 0, time_limit_min or 60, tasks, extra), \
        gpus_per_task is not None


def require() -> None:
    """Refuse --executor slurm, saying what to do, where it cannot submit."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError(f"--executor slurm needs submitit: {INSTALL_HINT}") from None
    # sbatch submits, srun starts each task (submitit's script calls it), scontrol follows them
    missing = [c for c in ("sbatch", "srun", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UsageError(f"--executor slurm: {', '.join(missing)} not on PATH; run from a host "
                         f"of the Slurm cluster (a login node) with Slurm's commands installed")


def _executor(run_dir: Path, options: SlurmOptions):
    import submitit

    executor = submitit.SlurmExecutor(folder=run_dir / store.SLURM_LOGS / "%j")
    known = executor._valid_parameters()
    extra = {k: v for k, v in options.extra.items() if k not in known}
    parameters = {k: _number(v) for k, v in options.extra.items() if k in known}
    parameters.update(time=options.time_limit_min, job_name=f"lenet-bench-{run_dir.name}",
                      # submitit's warning signal comes this long before the time limit; the
                      # tasks ignore it (a cell is not resumable mid-way), so it only has to come
                      # within the limit for Slurm to report TIMEOUT itself
                      signal_delay_s=min(30, options.time_limit_min * 60 // 2),
                      additional_parameters=extra)
    if options.partition:
        parameters["partition"] = options.partition
    if options.gpus_per_task:
        parameters["gpus_per_task"] = options.gpus_per_task
    try:
        executor.update_parameters(**parameters)
    except (NameError, ValueError, TypeError) as exc:
        raise UsageError(f"--slurm: {str(exc).splitlines()[0]}") from None
    return executor


def _number(value: str):
    return int(value) if value.isdigit() else value


def submit(run_dir: Path, keys: list[str], options: SlurmOptions, boundaries: bool) -> dict:
    """Submit `keys` (and the boundary searches, as a task of their own) as one job array;
    record it in slurm.json and return it. UsageError with sbatch's own words if Slurm refuses."""
    shares = _shares(keys, options.tasks)
    if boundaries:
        shares.append([])
    executor = _executor(run_dir, options)
    from submitit.core.utils import FailedJobError

    said = io.StringIO()  # sbatch's complaints: the one line that matters goes in the error
    # the pickled calls are code the tasks execute as this user: owner-only, whatever the umask
    (run_dir / store.SLURM_LOGS).mkdir(mode=0o700, exist_ok=True)
    (run_dir / store.SLURM_LOGS).chmod(0o700)
    umask = os.umask(0o077)
    try:
        with contextlib.redirect_stderr(said):
            jobs = executor.map_array(slurm_task.task, [str(run_dir)] * len(shares), shares,
                                      [not share for share in shares])
    except (FailedJobError, subprocess.SubprocessError, OSError, RuntimeError) as exc:
        lines = [w.strip() for w in f"{exc}\n{said.getvalue()}".splitlines() if w.strip()]
        # sbatch's fatal line says what is wrong; its error lines before it say how it got there
        said = next((w for w in lines if "fatal" in w), lines[0] if lines else str(exc))
        raise UsageError(f"Slurm refused the job: {said}; fix that, then submit with: "
                         f"python -m bench.run --resume {run_dir} (which takes new --partition, "
                         f"--time-limit, --tasks and --slurm options)") from None
    finally:
        os.umask(umask)
    submission = {"array_job_id": jobs[0].job_id.partition("_")[0],
                  "tasks": [{"job_id": job.job_id, "keys": share, "boundaries": not share}
                            for job, share in zip(jobs, shares)]}
    store.add_submission(run_dir, submission)
    return submission


def _shares(keys: list[str], tasks: int | None) -> list[list[str]]:
    count = min(tasks or len(keys), len(keys))
    return [keys[n::count] for n in range(count)] if keys else []


class SlurmUnreachable(Exception):
    """scontrol did not answer for a reason other than a job it no longer knows."""


def task_states(array_job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(state, Slurm's words for it) per array task id such as 12_3. A task Slurm no longer
    lists is missing; SlurmUnreachable where the controller did not answer."""
    states = {}
    for array_id in array_job_ids:
        try:
            result = subprocess.run(["scontrol", "show", "job", "-o", array_id],
                                    capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmUnreachable(str(exc)) from None
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise SlurmUnreachable(result.stderr.strip().splitlines()[-1:] or "scontrol failed")
        states.update(parse_states(result.stdout, array_id))
    return states


def parse_states(text: str, array_id: str) -> dict[str, tuple[str, str]]:
    """`scontrol show job -o` lines, one per task or per pending range (12_[4-9] is spread
    over its tasks), as task id: (state, words)."""
    states = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        state, reason = fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")
        words = state + (f", reason {reason}" if reason not in ("None", "") else "")
        if state == "FAILED":
            words += f", exit code {fields.get('ExitCode', '?')}"
        if "ArrayTaskId" not in fields:  # submitit submits a single task as a plain job
            states[fields.get("JobId", array_id)] = (state, words)
        for task in _task_ids(fields.get("ArrayTaskId", "")):
            states[f"{fields.get('ArrayJobId', array_id)}_{task}"] = (state, words)
    return states


def _task_ids(text: str) -> list[int]:
    ids = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            ids.extend(range(int(low), int(high or low) + 1))
    return ids


def live_tasks(submissions: list[dict], states: dict[str, tuple[str, str]]) -> list[dict]:
    return [t for s in submissions for t in s["tasks"]
            if states.get(t["job_id"], ("GONE", ""))[0] in LIVE_STATES]


def ended_rows(run_dir: Path, plan: Plan, submissions: list[dict],
               states: dict[str, tuple[str, str]], done: set[str]) -> list[Row]:
    """One `job_ended` row per cell whose task ended without its row."""
    by_key = {c.key(): c for c in plan.cells}
    rows = []
    # the latest submission first: a cell resubmitted after its job ended once is costed to
    # the job that held it last
    for task in (t for s in reversed(submissions) for t in s["tasks"]):
        state, words = states.get(task["job_id"], ("GONE", "no longer listed by Slurm"))
        if state in LIVE_STATES:
            continue
        for key in task["keys"]:
            if key in done or key not in by_key:
                continue
            error = (f"Slurm job {task['job_id']} ended ({words}) before this cell finished; "
                     f"its log: {run_dir / store.SLURM_LOGS / task['job_id']}")
            ended = [Attempt(by_key[key].batch_size, Outcome.JOB_ENDED, error)]
            rows.append(build_row(CellResult(by_key[key], plan.data, ended, None, None),
                                  Stamps(where={"slurm_job_id": task["job_id"]})))
            done.add(key)
    return rows


def cancel_words(submissions: list[dict]) -> str:
    ids = sorted({s["array_job_id"] for s in submissions})
    return f"scancel {' '.join(ids)}"


def threads_per_worker(environ, workers: int) -> int | None:
    """torch's threads for each of a task's workers: the CPUs Slurm gave the task (which
    task/none does not bind it to) shared among them, so that four GPU workers do not each
    spin as many threads as the task has CPUs. None where Slurm does not say."""
    cpus = int(environ.get("SLURM_CPUS_PER_TASK") or environ.get("SLURM_CPUS_ON_NODE") or 0)
    return max(1, cpus // workers) if cpus else None


def run_task(run_dir: str, keys: list[str], boundaries: bool) -> int:
    """One array task, on its node: run `keys` (skipping those already done, as after a
    requeue), or the boundary searches, on every GPU Slurm gave it (one worker each, from one
    queue) or on its CPUs; rows go to this task's own files. Returns how many it wrote."""
    import submitit  # the optional extra: imported where a task runs, never to plan

    path = Path(run_dir)
    job_id = submitit.JobEnvironment().job_id
    plan = store.open_existing(path)
    device = torch.device(plan.device)
    host = platform.node()
    hosts = path / store.HOSTS
    hosts.mkdir(exist_ok=True)
    if not (hosts / f"{host}.json").exists():
        store.write_json(hosts / f"{host}.json", run_env.collect(device))
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    slots = devices.parse("all", gpus) if gpus > 1 else devices.single(plan.device)
    (path / store.PARTS).mkdir(exist_ok=True)
    capacity, _ = planning.capacity_bytes(device, plan.memory_cap_bytes)
    written = []

    def sink(kind: str):
        return lambda job, result: written.append(
            store.append_row(store.part(path, kind, job_id), result.as_dict()))

    with Session(plan, slots, capacity, threads_per_worker(os.environ, len(slots)),
                 {"slurm_job_id": job_id}) as session:
        if boundaries:
            session.search_boundaries(session.boundary_jobs(store.done_boundaries(path)),
                                      sink("boundaries"))
        else:
            done = store.done_keys(store.read_run(path)[0])
            todo = [c for c in session.cells if c.key() in keys and c.key() not in done]
            # on the task's own cores, by the rule a local run follows (bench.execution.ahead)
            compiled, processes, _ = session.ahead_processes(todo, None)
            if processes:
                session.compile_ahead(compiled, processes)
            session.measure(todo, sink("results"))
    return len(written)
